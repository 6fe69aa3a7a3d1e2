// tokenizer.json features beyond what the Llama 3 files use, on a small hand-made tokenizer,
// each with the result Hugging Face `tokenizers` gives for it: ignore_merges, merges as pairs,
// added tokens (lstrip/rstrip, normalized two-pass matching, non-special tokens), unk_token,
// post-processor templates, token lookup, the regex iteration rules for empty matches.
#include <gtest/gtest.h>

#include "tokenizer/regex_splitter.h"
#include "tokenizer_test_support.h"

namespace llamaq::testing {
namespace {

using Ids = std::vector<int32_t>;
// Ids in small_tokenizer_json(): bytes are their own ids; merged tokens from 256.
constexpr int32_t kHello = 259;
constexpr int32_t kSpaceWorld = 265;
constexpr int32_t kBos = 300;
constexpr int32_t kEot = 301;

nlohmann::json added_token(const std::string& content, int id, bool special, bool lstrip = false,
                           bool rstrip = false, bool normalized = false) {
  return {{"id", id},          {"content", content}, {"single_word", false},
          {"lstrip", lstrip},  {"rstrip", rstrip},   {"normalized", normalized},
          {"special", special}};
}

TEST(TokenizerFeatures, BasicEncodeDecode) {
  const Tokenizer tokenizer = load_small(small_tokenizer_json());
  EXPECT_EQ(tokenizer.encode("hello world", false), (Ids{kHello, kSpaceWorld}));
  EXPECT_EQ(tokenizer.encode("hello world<|eot_id|>", true), (Ids{kHello, kSpaceWorld, kEot}));
  EXPECT_EQ(tokenizer.encode_with_bos("hello", false), (Ids{kBos, kHello}));
  EXPECT_EQ(tokenizer.decode(Ids{kBos, kHello, kSpaceWorld, kEot}, true), "hello world");
  EXPECT_EQ(tokenizer.decode(Ids{kBos, kHello}, false), "<|begin_of_text|>hello");
  EXPECT_EQ(tokenizer.vocab_size(), 302);
  EXPECT_EQ(tokenizer.bos_id(), kBos);
  EXPECT_TRUE(tokenizer.is_special(kEot));
  EXPECT_FALSE(tokenizer.is_special(kHello));
  EXPECT_EQ(tokenizer.token_bytes(kSpaceWorld), " world");
  EXPECT_EQ(tokenizer.find_token("Ġworld"), kSpaceWorld);
  EXPECT_EQ(tokenizer.find_token("<|eot_id|>"), kEot);
  EXPECT_EQ(tokenizer.find_token(" world"), std::nullopt);  // HF spelling only
  EXPECT_EQ(tokenizer.find_token("nope"), std::nullopt);
}

TEST(TokenizerFeatures, IgnoreMergesEmitsWholeVocabularyPieces) {
  nlohmann::json json = small_tokenizer_json();
  json["model"]["vocab"]["lo"] = 266;  // in the vocabulary, but no merge produces it
  EXPECT_EQ(load_small(json).encode("lo", false), (Ids{266}));
  json["model"]["ignore_merges"] = false;
  EXPECT_EQ(load_small(json).encode("lo", false), (Ids{'l', 'o'}));
  EXPECT_EQ(load_small(json).encode("hello", false), (Ids{kHello}));  // via the merges
}

TEST(TokenizerFeatures, MergesAsPairsAreEquivalent) {
  nlohmann::json json = small_tokenizer_json();
  json["model"]["ignore_merges"] = false;
  nlohmann::json pairs = nlohmann::json::array();
  for (const auto& merge : json["model"]["merges"]) {
    const std::string text = merge;
    pairs.push_back({text.substr(0, text.find(' ')), text.substr(text.find(' ') + 1)});
  }
  json["model"]["merges"] = pairs;
  EXPECT_EQ(load_small(json).encode("hello world", false), (Ids{kHello, kSpaceWorld}));
}

TEST(TokenizerFeatures, LstripAndRstripSwallowWhitespace) {
  nlohmann::json json = small_tokenizer_json();
  json["added_tokens"].push_back(added_token("<mask>", 270, true, /*lstrip=*/true));
  EXPECT_EQ(load_small(json).encode("a <mask> b", true), (Ids{'a', 270, ' ', 'b'}));
  json["added_tokens"].back()["rstrip"] = true;
  EXPECT_EQ(load_small(json).encode("a \t<mask>  b", true), (Ids{'a', 270, 'b'}));
  EXPECT_EQ(load_small(json).decode(Ids{'a', 270, 'b'}, false), "a<mask>b");
}

TEST(TokenizerFeatures, NonSpecialAddedTokensMatchEvenWithoutSpecialParsing) {
  nlohmann::json json = small_tokenizer_json();
  json["added_tokens"].push_back(added_token("zz", 271, /*special=*/false));
  const Tokenizer tokenizer = load_small(json);
  EXPECT_EQ(tokenizer.encode("azzb", false), (Ids{'a', 271, 'b'}));
  EXPECT_EQ(tokenizer.encode("azzb<|eot_id|>", true), (Ids{'a', 271, 'b', kEot}));
  EXPECT_FALSE(tokenizer.is_special(271));
  EXPECT_EQ(tokenizer.decode(Ids{271, kEot}, true), "zz");
}

TEST(TokenizerFeatures, NonNormalizedTokensAreMatchedBeforeNormalizedOnes) {
  nlohmann::json json = small_tokenizer_json();
  json["added_tokens"].push_back(added_token("abc", 273, false, false, false, /*normalized=*/true));
  json["added_tokens"].push_back(added_token("ab", 272, false, false, false, /*normalized=*/false));
  const Tokenizer tokenizer = load_small(json);
  EXPECT_EQ(tokenizer.encode("abc", true), (Ids{272, 'c'}));  // HF: first pass wins
  EXPECT_EQ(tokenizer.encode("xabcx", true), (Ids{'x', 272, 'c', 'x'}));
  EXPECT_EQ(tokenizer.encode("ac abc", true), (Ids{'a', 'c', ' ', 272, 'c'}));
  json["added_tokens"][3]["normalized"] = true;  // same pass now: longest match wins
  EXPECT_EQ(load_small(json).encode("abc", true), (Ids{273}));
}

TEST(TokenizerFeatures, LongestAddedTokenWinsAtTheSamePosition) {
  nlohmann::json json = small_tokenizer_json();
  json["added_tokens"].push_back(added_token("<|eot", 274, true));
  const Tokenizer tokenizer = load_small(json);
  EXPECT_EQ(tokenizer.encode("<|eot_id|>", true), (Ids{kEot}));
  EXPECT_EQ(tokenizer.encode("<|eot_x", true), (Ids{274, '_', 'x'}));
}

TEST(TokenizerFeatures, UnknownBytesUseUnkToken) {
  nlohmann::json json = small_tokenizer_json();
  json["model"]["vocab"].erase("z");
  json["model"]["vocab"]["<unk>"] = 280;
  json["model"]["unk_token"] = "<unk>";
  json["model"]["ignore_merges"] = false;
  EXPECT_EQ(load_small(json).encode("azzz", false), (Ids{'a', 280, 280, 280}));
  json["model"]["fuse_unk"] = true;
  EXPECT_EQ(load_small(json).encode("azzz", false), (Ids{'a', 280}));
}

TEST(TokenizerFeatures, PostProcessorTemplates) {
  nlohmann::json json = small_tokenizer_json();
  auto& processor = json["post_processor"];
  processor["single"].push_back({{"SpecialToken", {{"id", "<|eot_id|>"}, {"type_id", 0}}}});
  processor["special_tokens"]["<|eot_id|>"] = {
      {"id", "<|eot_id|>"}, {"ids", {kEot}}, {"tokens", {"<|eot_id|>"}}};
  json["post_processor"] = {
      {"type", "Sequence"},
      {"processors", {{{"type", "ByteLevel"}, {"trim_offsets", false}}, processor}}};
  EXPECT_EQ(load_small(json).encode_with_bos("hello", false), (Ids{kBos, kHello, kEot}));

  json["post_processor"] = {{"type", "ByteLevel"}};  // no template: the config's bos_token
  EXPECT_EQ(load_small(json).encode_with_bos("hello", false), (Ids{kHello}));
  EXPECT_EQ(load_small(json).bos_id(), std::nullopt);
  const Tokenizer with_config =
      load_small(json, R"({"bos_token": {"content": "<|begin_of_text|>"}})");
  EXPECT_EQ(with_config.encode_with_bos("hello", false), (Ids{kBos, kHello}));
  EXPECT_EQ(with_config.bos_id(), kBos);
}

TEST(TokenizerFeatures, StopIds) {
  const Tokenizer tokenizer =
      load_small(small_tokenizer_json(), R"({"eos_token": "<|begin_of_text|>"})");
  EXPECT_EQ(tokenizer.stop_ids(Ids{kHello, kEot}), (Ids{kHello, kEot, kBos}));
  EXPECT_EQ(real_tokenizer("llama3_1").stop_ids(Ids{128001, 128008, 128009}),
            (Ids{128001, 128008, 128009}));
  // The fixture's tokenizer.json names 128008 <|reserved_special_token_4|> (no <|eom_id|>).
  EXPECT_EQ(real_tokenizer("llama3_1").stop_ids(Ids{}), (Ids{128009, 128001}));
  EXPECT_EQ(real_tokenizer("llama3").stop_ids(Ids{128001}), (Ids{128001, 128009}));
}

TEST(TokenizerFeatures, TokenizerCopiesShareState) {
  const Tokenizer original = load_small(small_tokenizer_json());
  const Tokenizer copy = original;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(copy.encode("hello", false), original.encode("hello", false));
}

// Pieces a RegexSplitter produces, as strings.
std::vector<std::string> pieces(const std::string& pattern, const std::string& text) {
  const RegexSplitter splitter(pattern, "test");
  std::vector<std::string> out;
  splitter.split(text,
                 [&](size_t begin, size_t end) { out.push_back(text.substr(begin, end - begin)); });
  return out;
}

TEST(RegexSplitter, IsolatedSplitKeepsGapsAndDropsEmptyPieces) {
  using Strings = std::vector<std::string>;
  EXPECT_EQ(pieces("x*", "abxc"), (Strings{"a", "b", "x", "c"}));  // empty matches (onig rules)
  EXPECT_EQ(pieces("x*|bc", "bc"), (Strings{"b", "c"}));  // onig: no retry at an empty match
  EXPECT_EQ(pieces("[0-9]+", "ab12cd3"), (Strings{"ab", "12", "cd", "3"}));
  EXPECT_EQ(pieces("z", "abc"), (Strings{"abc"}));
  EXPECT_EQ(pieces("^a", "a\na"), (Strings{"a", "\n", "a"}));  // ^ is a line anchor (Ruby syntax)
  EXPECT_EQ(pieces("\\p{L}+", "h\xC3\xA9llo w\xC3\xB6rld"),
            (Strings{"h\xC3\xA9llo", " ", "w\xC3\xB6rld"}));
  EXPECT_TRUE(pieces("\\s+", "").empty());
}

// Where Oniguruma (Hugging Face) and PCRE2 disagree, the Oniguruma meaning is kept.
TEST(RegexSplitter, KeepsOnigurumaMeaningOfEscapes) {
  using Strings = std::vector<std::string>;
  const std::string llama3 =
      small_tokenizer_json()["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
  // U+180E is not White_Space (PCRE2's own \s would match it and split "\u180E|\u180Eb").
  EXPECT_EQ(pieces(llama3,
                   "\xE1\xA0\x8E\xE1\xA0\x8E"
                   "b"),
            (Strings{"\xE1\xA0\x8E\xE1\xA0\x8E", "b"}));
  EXPECT_EQ(pieces(llama3, "\xC2\x85\xC2\x85y"),
            (Strings{"\xC2\x85", "\xC2\x85y"}));                           // U+0085 is White_Space
  EXPECT_EQ(pieces("\\h+", "xx09afAFg"), (Strings{"xx", "09afAF", "g"}));  // \h: hex digit
  EXPECT_EQ(pieces("[\\h]", "g1"), (Strings{"g", "1"}));
  EXPECT_EQ(pieces("\\v", "a\vb\nc"), (Strings{"a", "\v", "b\nc"}));  // \v: U+000B only
  EXPECT_EQ(pieces("\\S+", "ab \xE1\xA0\x8E"), (Strings{"ab", " ", "\xE1\xA0\x8E"}));
  EXPECT_EQ(pieces("[]a]+", "x]a]"), (Strings{"x", "]a]"}));  // leading ']' is a member
}

}  // namespace
}  // namespace llamaq::testing
