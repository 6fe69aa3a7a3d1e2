// Exact parity with Hugging Face on the reference fixtures: every encode, chat and decode case of
// tests/data/tokenizers/reference/{llama3,llama3_1}-public.json (computed with transformers), and
// llama.cpp's llama-bpe test set. Each test loops over all its cases with SCOPED_TRACE and checks
// that the number of cases run equals the number in the file, so none is skipped silently.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/streaming_decoder.h"
#include "tokenizer_test_support.h"

namespace llamaq::testing {
namespace {

std::vector<int32_t> ids_of(const nlohmann::json& array) {
  return array.get<std::vector<int32_t>>();
}

std::vector<ChatMessage> messages_of(const nlohmann::json& array) {
  std::vector<ChatMessage> messages;
  for (const auto& m : array)
    messages.push_back({m.at("role"), m.at("content")});
  return messages;
}

class FixtureParity : public ::testing::TestWithParam<std::string> {
 protected:
  const Tokenizer& tokenizer() const { return real_tokenizer(GetParam()); }
  const nlohmann::json& cases(const char* kind) const {
    return reference_cases(GetParam()).at(kind);
  }
};

TEST_P(FixtureParity, EncodeMatchesHuggingFace) {
  size_t checked = 0;
  for (const auto& c : cases("encode")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: " + nlohmann::json(text).dump());
    EXPECT_EQ(tokenizer().encode(text, /*parse_special=*/true), ids_of(c.at("ids")));
    ++checked;
  }
  EXPECT_EQ(checked, 363u);
}

TEST_P(FixtureParity, EncodeWithBosPrependsBeginOfText) {
  size_t checked = 0;
  for (const auto& c : cases("encode")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: " + nlohmann::json(text).dump());
    // The fixtures may lack ids_with_bos; then HF's TemplateProcessing result is BOS + ids.
    std::vector<int32_t> expected;
    if (c.contains("ids_with_bos")) {
      expected = ids_of(c.at("ids_with_bos"));
    } else {
      expected.push_back(128000);
      for (const auto& id : c.at("ids"))
        expected.push_back(id.get<int32_t>());
    }
    EXPECT_EQ(tokenizer().encode_with_bos(text, true), expected);
    ++checked;
  }
  EXPECT_EQ(checked, cases("encode").size());
  EXPECT_EQ(tokenizer().bos_id(), 128000);
}

TEST_P(FixtureParity, ChatRenderingAndIdsMatchApplyChatTemplate) {
  const ChatFormat* format = tokenizer().chat_format();
  ASSERT_NE(format, nullptr);
  size_t checked = 0;
  for (const auto& c : cases("chat")) {
    SCOPED_TRACE("messages: " + c.at("messages").dump());
    const std::vector<ChatMessage> messages = messages_of(c.at("messages"));
    const bool generation_prompt = c.at("add_generation_prompt");
    EXPECT_EQ(format->render(messages, generation_prompt), c.at("rendered").get<std::string>());
    EXPECT_EQ(format->encode(tokenizer(), messages, generation_prompt), ids_of(c.at("ids")));
    EXPECT_EQ(tokenizer().encode_chat(messages, generation_prompt), ids_of(c.at("ids")));
    ++checked;
  }
  EXPECT_EQ(checked, 7u);
}

TEST_P(FixtureParity, DecodeMatchesHuggingFace) {
  size_t checked = 0;
  for (const auto& c : cases("decode")) {
    SCOPED_TRACE("ids: " + c.at("ids").dump());
    const std::vector<int32_t> ids = ids_of(c.at("ids"));
    EXPECT_EQ(tokenizer().decode(ids, false), c.at("text").get<std::string>());
    EXPECT_EQ(tokenizer().decode(ids, true), c.at("text_skip_special").get<std::string>());
    for (const bool skip : {false, true}) {  // the streaming decoder agrees on these too
      StreamingDecoder stream(tokenizer(), skip);
      std::string streamed;
      for (const int32_t id : ids)
        streamed += stream.push(id);
      streamed += stream.finish();
      EXPECT_EQ(streamed, c.at(skip ? "text_skip_special" : "text").get<std::string>());
    }
    ++checked;
  }
  EXPECT_EQ(checked, 60u);
}

TEST_P(FixtureParity, EncodeDecodeRoundTripOnFixtureTexts) {
  for (const auto& c : cases("encode")) {
    const std::string text = c.at("text");
    SCOPED_TRACE("text: " + nlohmann::json(text).dump());
    EXPECT_EQ(tokenizer().decode(tokenizer().encode(text, false), false), text);
  }
}

// tests/data/tokenizers/peer/llama-bpe.{inp,out}: texts separated by "\n__ggml_vocab_test__\n",
// one line of expected ids (no BOS) per text.
TEST_P(FixtureParity, LlamaCppPeerSet) {
  const std::string inputs = read_file(tokenizer_data_dir() / "peer" / "llama-bpe.inp");
  const std::string outputs = read_file(tokenizer_data_dir() / "peer" / "llama-bpe.out");
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0, next; (next = inputs.find(separator, pos)) != std::string::npos;
       pos = next + separator.size()) {
    texts.push_back(inputs.substr(pos, next - pos));
  }
  std::vector<std::vector<int32_t>> expected;
  std::istringstream lines(outputs);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream numbers(line);
    std::vector<int32_t> ids;
    for (int32_t id; numbers >> id;)
      ids.push_back(id);
    expected.push_back(ids);
  }
  ASSERT_EQ(texts.size(), 46u);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + ": " + nlohmann::json(texts[i]).dump());
    EXPECT_EQ(tokenizer().encode(texts[i], false), expected[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Llama3, FixtureParity, ::testing::Values("llama3", "llama3_1"));

}  // namespace
}  // namespace llamaq::testing
