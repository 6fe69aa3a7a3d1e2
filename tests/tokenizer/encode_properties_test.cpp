// Encoding properties on the real Llama 3 vocabulary: decode(encode(s)) == s for seeded random
// Unicode strings, special-token parsing on/off, long inputs, and the two BPE merge loops
// agreeing on every piece.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <thread>

#include "random_text.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer_test_support.h"

namespace llamaq::testing {
namespace {

constexpr int32_t kEot = 128009;

TEST(EncodeProperties, DecodeOfEncodeIsIdentityForRandomUnicode) {
  for (const char* name : {"llama3", "llama3_1"}) {
    const Tokenizer& tokenizer = real_tokenizer(name);
    std::mt19937 rng(1234);
    for (int round = 0; round < 1000; ++round) {
      const std::string text = random_unicode_string(rng, 120);
      SCOPED_TRACE(nlohmann::json(text).dump());
      const std::vector<int32_t> ids = tokenizer.encode(text, false);
      EXPECT_EQ(tokenizer.decode(ids, false), text);
      EXPECT_EQ(tokenizer.encode(text, true), ids);  // no special-token text in these strings
      for (const int32_t id : ids)
        ASSERT_LT(id, 128000);
    }
  }
}

TEST(EncodeProperties, SpecialTokenTextIsParsedOnlyWhenAsked) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  EXPECT_EQ(tokenizer.encode("<|eot_id|>", true), std::vector<int32_t>{kEot});
  EXPECT_EQ(tokenizer.encode("<|eot_id|>", false),
            (std::vector<int32_t>{27, 91, 68, 354, 851, 91, 29}));
  EXPECT_EQ(tokenizer.encode("Hi<|eot_id|> there", true),
            (std::vector<int32_t>{13347, kEot, 1070}));
  EXPECT_EQ(tokenizer.encode("<|eot_id|", true), tokenizer.encode("<|eot_id|", false));
  EXPECT_EQ(tokenizer.encode("<|eot_id|><|eot_id|>", true), (std::vector<int32_t>{kEot, kEot}));
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{13347, kEot, 1070}, false), "Hi<|eot_id|> there");
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{13347, kEot, 1070}, true), "Hi there");
}

TEST(EncodeProperties, RandomTextWithSpecialMarkersRoundTripsBothWays) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  // Special tokens of the fixture files (which use Llama 3.0's names for 128008 and 128010).
  const char* markers[] = {"<|eot_id|>",
                           "<|begin_of_text|>",
                           "<|start_header_id|>",
                           "<|end_of_text|>",
                           "<|reserved_special_token_7|>",
                           "<|end_header_id|>"};
  std::mt19937 rng(99);
  for (int round = 0; round < 300; ++round) {
    std::string text;
    for (int part = 0; part < 4; ++part) {
      text += random_unicode_string(rng, 20);
      text += markers[rng() % std::size(markers)];
    }
    SCOPED_TRACE(nlohmann::json(text).dump());
    const std::vector<int32_t> parsed = tokenizer.encode(text, true);
    const std::vector<int32_t> plain = tokenizer.encode(text, false);
    EXPECT_EQ(std::count_if(parsed.begin(), parsed.end(), [](int32_t id) { return id >= 128000; }),
              4);
    EXPECT_EQ(std::count_if(plain.begin(), plain.end(), [](int32_t id) { return id >= 128000; }),
              0);
    EXPECT_EQ(tokenizer.decode(parsed, false), text);
    EXPECT_EQ(tokenizer.decode(plain, false), text);
  }
}

TEST(EncodeProperties, EmptyTextHasNoTokens) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  EXPECT_TRUE(tokenizer.encode("", true).empty());
  EXPECT_EQ(tokenizer.encode_with_bos("", true), std::vector<int32_t>{128000});
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{}, false), "");
}

// One-megabyte single-line inputs: each must stay linear (no quadratic BPE, no PCRE2 limit or
// stack failure) and round-trip exactly.
TEST(EncodeProperties, MegabyteSingleLineInputsFinishQuickly) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  const size_t size = 1 << 20;
  const auto repeat = [&](std::string_view unit) {
    std::string text;
    while (text.size() < size)
      text += unit;
    return text;
  };
  std::mt19937 rng(5);
  std::string words;
  while (words.size() < size)
    words += random_unicode_string(rng, 30) + " ";
  for (std::erase(words, '\n'); words.size() > size;)
    words.pop_back();
  const std::pair<const char*, std::string> inputs[] = {
      {"one letter run", std::string(size, 'a')}, {"spaces", std::string(size, ' ')},
      {"spaces then x", repeat(" ") + "x"},       {"tabs and spaces", repeat("  \t") + "y"},
      {"digits", std::string(size, '7')},         {"punctuation", std::string(size, '!')},
      {"emoji", repeat("\xF0\x9F\x98\x80")},      {"apostrophes", repeat("'")},
      {"special markers", repeat("<|eot_id|>")},  {"random words", words}};
  for (const auto& [name, text] : inputs) {
    SCOPED_TRACE(name);
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer.encode(text, false);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 10.0);
    EXPECT_EQ(tokenizer.decode(ids, false), text);
  }
  // A long run of one letter is a single piece: spot-check the merged result.
  EXPECT_EQ(tokenizer.encode(std::string(40, 'x'), false), std::vector<int32_t>(5, 45202));
}

TEST(EncodeProperties, ConcurrentEncodingFromSeveralThreadsGivesTheSameIds) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  std::mt19937 rng(17);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i)
    texts.push_back(random_unicode_string(rng, 100));
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts)
    expected.push_back(tokenizer.encode(text, true));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < mismatches.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          mismatches[t] += tokenizer.encode(texts[i], true) != expected[i];
        }
      }
    });
  }
  for (std::thread& thread : threads)
    thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(EncodeProperties, LinearAndHeapMergeLoopsAgree) {
  const std::string json = read_file(tokenizer_data_dir() / "llama3_1" / "tokenizer.json");
  const TokenizerDefinition definition = parse_tokenizer_json(json, "llama3_1/tokenizer.json");
  std::mt19937 rng(3);
  BpeScratch scratch;
  for (int round = 0; round < 3000; ++round) {
    std::string piece = random_unicode_string(rng, 80);
    if (round % 3 == 0) {  // raw bytes, too: pieces are arbitrary byte strings for the model
      for (char& c : piece)
        c = static_cast<char>(rng());
    }
    std::vector<int32_t> linear;
    std::vector<int32_t> heap;
    definition.model.encode_piece_with(piece, BpeModel::MergeLoop::kLinear, linear, scratch);
    definition.model.encode_piece_with(piece, BpeModel::MergeLoop::kHeap, heap, scratch);
    ASSERT_EQ(linear, heap) << "round " << round;
  }
}

}  // namespace
}  // namespace llamaq::testing
