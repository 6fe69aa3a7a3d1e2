// Every user-caused failure is a llamaq::Error whose message names the file or input and the
// problem: malformed or unsupported tokenizer.json / tokenizer_config.json, missing files,
// invalid UTF-8 text, ids outside the vocabulary.
#include <gtest/gtest.h>

#include <chrono>

#include "tokenizer_test_support.h"

namespace llamaq::testing {
namespace {

// Runs f, expects llamaq::Error, returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("non-llamaq exception: ") + e.what();
  }
  return "no error";
}

// Loads the small tokenizer after edit(json) and returns the error message.
template <typename Edit>
std::string load_error(Edit&& edit) {
  nlohmann::json json = small_tokenizer_json();
  edit(json);
  return error_of([&] { load_small(json); });
}

TEST(TokenizerErrors, InvalidJson) {
  EXPECT_CONTAINS(error_of([] { Tokenizer::from_json("{\"model\": ", "", "x/tokenizer.json"); }),
                  std::string("x/tokenizer.json: invalid JSON: "));
  EXPECT_CONTAINS(error_of([] { Tokenizer::from_json("[1, 2]", "", "x/tokenizer.json"); }),
                  std::string("x/tokenizer.json: field '(document)' must be a JSON object"));
  EXPECT_CONTAINS(error_of([] { Tokenizer::from_json("\"\xFF\"", "", "x/tokenizer.json"); }),
                  std::string("x/tokenizer.json: invalid JSON"));
  EXPECT_CONTAINS(error_of([] { load_small(small_tokenizer_json(), "{not json"); }),
                  std::string("small/tokenizer_config.json: invalid JSON"));
}

TEST(TokenizerErrors, MissingFields) {
  EXPECT_EQ(load_error([](nlohmann::json& j) { j.erase("model"); }),
            "small/tokenizer.json: missing field 'model'");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"].erase("vocab"); }),
            "small/tokenizer.json: missing field 'model.vocab'");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"].erase("merges"); }),
            "small/tokenizer.json: missing field 'model.merges'");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"].erase("type"); }),
            "small/tokenizer.json: missing field 'model.type'");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j.erase("pre_tokenizer"); }),
            "small/tokenizer.json: missing field 'pre_tokenizer'");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j.erase("decoder"); }),
            "small/tokenizer.json: missing field 'decoder'");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["added_tokens"][0].erase("id"); }),
            "small/tokenizer.json: missing field 'added_tokens[0].id'");
  EXPECT_EQ(load_error([](nlohmann::json& j) {
              j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = nlohmann::json::object();
            }),
            "small/tokenizer.json: field 'pre_tokenizer.pretokenizers[0].pattern' is unsupported: "
            "only {\"Regex\": ...} patterns are implemented");
}

TEST(TokenizerErrors, WrongTypesAndValues) {
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"]["vocab"]["a"] = "97"; }),
            "small/tokenizer.json: field 'model.vocab[\"a\"]' must be an integer");
  EXPECT_EQ(
      load_error([](nlohmann::json& j) { j["model"]["vocab"]["a"] = 1 << 24; }),
      "small/tokenizer.json: field 'model.vocab[\"a\"]' is 16777216, outside the supported id "
      "range 0..1048575");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"]["vocab"]["zz"] = 97; }),
            "small/tokenizer.json: field 'model.vocab' maps two tokens to id 97");
  EXPECT_EQ(
      load_error([](nlohmann::json& j) { j["model"]["merges"][0] = "h e x"; }),
      "small/tokenizer.json: field 'model.merges[0]' must be two tokens separated by one space");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"]["merges"][1] = "q zz"; }),
            "small/tokenizer.json: field 'model.merges[1]' uses token \"zz\", which is not in "
            "model.vocab");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"]["merges"][2] = "x y"; }),
            "small/tokenizer.json: field 'model.merges[2]' uses token \"xy\", which is not in "
            "model.vocab");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["model"]["merges"] = 5; }),
            "small/tokenizer.json: field 'model.merges' must be a JSON array");
  EXPECT_EQ(
      load_error([](nlohmann::json& j) { j["added_tokens"][1]["content"] = "<|begin_of_text|>"; }),
      "small/tokenizer.json: field 'added_tokens[1].content' \"<|begin_of_text|>\" appears twice");
  EXPECT_EQ(load_error([](nlohmann::json& j) { j["added_tokens"][0]["special"] = "yes"; }),
            "small/tokenizer.json: field 'added_tokens[0].special' must be true or false");
}

TEST(TokenizerErrors, UnsupportedStructuresAreRefused) {
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) {
                    j["normalizer"] = {{"type", "NFC"}};
                  }),
                  std::string("small/tokenizer.json: field 'normalizer' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) { j["model"]["type"] = "WordPiece"; }),
                  std::string("field 'model.type' is unsupported: model type \"WordPiece\""));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) { j["model"]["byte_fallback"] = true; }),
                  std::string("field 'model.byte_fallback' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) { j["model"]["dropout"] = 0.1; }),
                  std::string("field 'model.dropout' is unsupported"));
  EXPECT_CONTAINS(
      load_error([](nlohmann::json& j) { j["model"]["continuing_subword_prefix"] = "##"; }),
      std::string("field 'model.continuing_subword_prefix' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) { j["model"]["unk_token"] = "<unk>"; }),
                  std::string("field 'model.unk_token' is not in model.vocab"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) { j["pre_tokenizer"] = nullptr; }),
                  std::string("field 'pre_tokenizer' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) {
                    j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true;
                  }),
                  std::string("field 'pre_tokenizer.pretokenizers[1].use_regex' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) {
                    j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
                  }),
                  std::string("field 'pre_tokenizer.pretokenizers[0].behavior' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) {
                    j["decoder"] = {{"type", "WordPiece"}};
                  }),
                  std::string("field 'decoder' is unsupported"));
  EXPECT_CONTAINS(
      load_error([](nlohmann::json& j) {
        j["post_processor"] = {{"type", "BertProcessing"}};
      }),
      std::string("field 'post_processor' is unsupported: post-processor type \"BertProcessing\""));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) { j["added_tokens"][0]["single_word"] = true; }),
                  std::string("field 'added_tokens[0].single_word' is unsupported"));
  EXPECT_CONTAINS(load_error([](nlohmann::json& j) {
                    j["post_processor"]["special_tokens"]["<|begin_of_text|>"]["ids"] = {999};
                  }),
                  std::string("field 'post_processor' uses id 999, which is not a token"));
}

TEST(TokenizerErrors, BrokenOrForeignRegex) {
  const auto with_regex = [](std::string regex) {
    return load_error([&](nlohmann::json& j) {
      j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = regex;
    });
  };
  EXPECT_CONTAINS(
      with_regex("(\\p{L}+"),
      std::string("small/tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex: the "
                  "Split regex does not compile (at offset 7): missing closing parenthesis"));
  EXPECT_CONTAINS(with_regex("\\p{Nope}"), std::string("does not compile"));
  EXPECT_CONTAINS(with_regex("\\w+"),
                  std::string("small/tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex: "
                              "regex \\w at offset 0 is not supported: word characters differ"));
  EXPECT_CONTAINS(with_regex("a\\b"), std::string("regex \\b at offset 1 is not supported"));
  EXPECT_CONTAINS(with_regex("(?m:.)"), std::string("regex inline option 'm' at offset 0"));
  EXPECT_CONTAINS(with_regex("[^\\S]"), std::string("negated class escape inside [...]"));
  EXPECT_CONTAINS(with_regex("[a[b]]"), std::string("nested character class"));
  EXPECT_CONTAINS(with_regex("(\\s"), std::string("(at offset 91 of its PCRE2 translation)"));
}

// A pattern that backtracks exponentially exceeds PCRE2's step limit (even after the retry with a
// raised limit): a clear error, never a wrong split or a hang.
TEST(TokenizerErrors, CatastrophicRegexGivesAClearErrorQuickly) {
  nlohmann::json json = small_tokenizer_json();
  json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a|aa)+(?=b)|c";
  const Tokenizer tokenizer = load_small(json);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(error_of([&] { tokenizer.encode(std::string(40, 'a') + "c", false); }),
            "small/tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex: matching the "
            "Split regex failed at byte offset 0 of a 41-byte text: match limit exceeded");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST(TokenizerErrors, ConfigProblems) {
  EXPECT_EQ(error_of([] { load_small(small_tokenizer_json(), R"({"bos_token": "<s>"})"); }),
            "small/tokenizer_config.json: bos_token \"<s>\" is not a token of the tokenizer");
  EXPECT_EQ(error_of([] { load_small(small_tokenizer_json(), R"({"eos_token": 5})"); }),
            "small/tokenizer_config.json: field 'eos_token' must be a string");
  EXPECT_EQ(error_of([] {
              load_small(small_tokenizer_json(),
                         R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
            }),
            "small/tokenizer_config.json: field 'chat_template' is a list of templates without one "
            "named \"default\"");
}

TEST(TokenizerErrors, MissingFiles) {
  const auto missing = std::filesystem::path(LLAMAQ_BINARY_DIR) / "no-such-dir";
  EXPECT_CONTAINS(error_of([&] { Tokenizer::from_model_dir(missing); }),
                  std::string("no-such-dir: no tokenizer.json in this directory"));
  EXPECT_CONTAINS(error_of([&] { Tokenizer::load(missing / "tokenizer.json", ""); }),
                  std::string("cannot open " + (missing / "tokenizer.json").string()));
}

TEST(TokenizerErrors, InvalidUtf8TextIsRejected) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  EXPECT_EQ(error_of([&] { tokenizer.encode("abc\xFF", true); }),
            "cannot tokenize: the text is not valid UTF-8 (ill-formed sequence at byte 3 of 4)");
  EXPECT_CONTAINS(error_of([&] { tokenizer.encode("ab\xE2\x82", false); }),
                  std::string("at byte 2 of 4"));
  EXPECT_CONTAINS(error_of([&] { tokenizer.encode("\xC0\xAF", false); }), std::string("at byte 0"));
  EXPECT_CONTAINS(error_of([&] { tokenizer.encode("\xED\xA0\x80", false); }),
                  std::string("not valid UTF-8"));
  EXPECT_CONTAINS(error_of([&] { tokenizer.encode_with_bos("\xF4\x90\x80\x80", false); }),
                  std::string("not valid UTF-8"));
}

TEST(TokenizerErrors, IdsOutsideTheVocabulary) {
  const Tokenizer& tokenizer = real_tokenizer("llama3_1");
  EXPECT_EQ(error_of([&] {
              tokenizer.decode(std::vector<int32_t>{9906, 128256}, false);
            }),
            "token id 128256 is not in the vocabulary (valid ids: 0..128255)");
  EXPECT_CONTAINS(error_of([&] { tokenizer.decode(std::vector<int32_t>{-1}, true); }),
                  std::string("token id -1"));
  EXPECT_CONTAINS(error_of([&] { tokenizer.token_bytes(1 << 30); }),
                  std::string("token id 1073741824"));
  EXPECT_CONTAINS(error_of([&] { tokenizer.is_special(-5); }), std::string("token id -5"));
  EXPECT_CONTAINS(error_of([&] {
                    tokenizer.stop_ids(std::vector<int32_t>{128001, 200000});
                  }),
                  std::string("token id 200000"));
}

TEST(TokenizerErrors, ByteWithoutTokenAndNoUnk) {
  nlohmann::json json = small_tokenizer_json();
  json["model"]["vocab"].erase("z");
  const Tokenizer tokenizer = load_small(json);
  EXPECT_EQ(tokenizer.encode("hello", false), std::vector<int32_t>{259});
  EXPECT_EQ(error_of([&] { tokenizer.encode("lazy", false); }),
            "the vocabulary has no token for byte 0x7A and the model has no unk_token");
}

}  // namespace
}  // namespace llamaq::testing
