// Chat records: loss only on assistant contents and their <|eot_id|>, for the real Llama 3 and
// Llama 3.1 tokenizers and for every chat template llamaq recognises.
#include <gtest/gtest.h>

#include <algorithm>

#include "tiny_tokenizer.h"
#include "tokenizer/utf8_text.h"
#include "train_test_support.h"

namespace llamaq::test {
namespace {

constexpr int32_t kEotId = 128009;
constexpr int32_t kStartHeaderId = 128006;
constexpr int32_t kEndHeaderId = 128007;

std::vector<int32_t> prefix_of(const std::vector<int32_t>& ids, size_t n) {
  return {ids.begin(), ids.begin() + ptrdiff_t(std::min(n, ids.size()))};
}

// Rebuilds the example from independently encoded parts: for each assistant message k, the
// chat format's generation prompt of messages[0..k) must be the example's prefix, followed by
// the assistant content encoded on its own and <|eot_id|>; and the example must be a prefix of
// encode_chat() of the whole conversation.
void expect_parts_concatenate(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                              const Example& example) {
  const int32_t eot = *tokenizer.find_token("<|eot_id|>");
  const std::vector<int32_t> whole = tokenizer.encode_chat(messages, false);
  EXPECT_EQ(prefix_of(whole, example.input_ids.size()), example.input_ids);
  std::vector<int32_t> rebuilt;
  for (size_t k = 0; k < messages.size(); ++k) {
    if (messages[k].role != "assistant") continue;
    rebuilt = tokenizer.encode_chat(messages.first(k), true);
    const std::vector<int32_t> content =
        tokenizer.encode(python_strip(messages[k].content), /*parse_special=*/false);
    rebuilt.insert(rebuilt.end(), content.begin(), content.end());
    rebuilt.push_back(eot);
    ASSERT_LE(rebuilt.size(), example.input_ids.size());
    EXPECT_EQ(prefix_of(example.input_ids, rebuilt.size()), rebuilt) << "assistant message " << k;
  }
  EXPECT_EQ(rebuilt, example.input_ids) << "the example ends with the last assistant turn";
}

TEST(ChatExamples, SingleTurnTrainsOnlyTheAnswerAndItsEndOfTurn) {
  const Tokenizer tokenizer = real_tokenizer("llama3");
  const std::vector<ChatMessage> messages = {{"user", "What is the capital of France?"},
                                             {"assistant", "The capital of France is Paris."}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  ASSERT_EQ(example.input_ids.size(), example.labels.size());
  EXPECT_EQ(trainable_spans(tokenizer, example),
            std::vector<std::string>{"The capital of France is Paris.<|eot_id|>"});
  EXPECT_EQ(masked_text(tokenizer, example),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of "
            "France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  expect_parts_concatenate(tokenizer, messages, example);
}

TEST(ChatExamples, EarlyLlama3TemplateTrailingHeaderIsDropped) {
  // This template appends the assistant header to every conversation; it carries no loss.
  const Tokenizer tokenizer = real_tokenizer("llama3");
  ASSERT_TRUE(tokenizer.chat_format()->always_adds_generation_prompt());
  const std::vector<ChatMessage> messages = {{"user", "Hi"}, {"assistant", "Hello there."}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  const std::vector<int32_t> whole = tokenizer.encode_chat(messages, false);
  ASSERT_EQ(whole.size(), example.input_ids.size() + 4);
  EXPECT_EQ(std::vector<int32_t>(whole.end() - 4, whole.end()),
            (std::vector<int32_t>{kStartHeaderId, 78191, kEndHeaderId, 271}));
  EXPECT_EQ(example.input_ids.back(), kEotId);
  EXPECT_EQ(example.labels.back(), kEotId);
}

TEST(ChatExamples, MultiTurnMasksEverySystemUserAndHeaderToken) {
  const Tokenizer tokenizer = real_tokenizer("llama3");
  const std::vector<ChatMessage> messages = {{"system", "You are terse."},
                                             {"user", "Name a colour."},
                                             {"assistant", "Blue."},
                                             {"user", "Another one?"},
                                             {"assistant", "Green, like grass."}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  EXPECT_EQ(trainable_spans(tokenizer, example),
            (std::vector<std::string>{"Blue.<|eot_id|>", "Green, like grass.<|eot_id|>"}));
  EXPECT_EQ(masked_text(tokenizer, example),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are "
            "terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName a "
            "colour.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "<|start_header_id|>user<|end_header_id|>\n\nAnother "
            "one?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  for (size_t i = 0; i < example.labels.size(); ++i) {
    const int32_t id = example.input_ids[i];
    if (id == kStartHeaderId || id == kEndHeaderId || id == 128000) {
      EXPECT_EQ(example.labels[i], kIgnoreIndex) << "position " << i;
    }
  }
  expect_parts_concatenate(tokenizer, messages, example);
}

TEST(ChatExamples, Llama31SystemBlockIsMaskedAndIdsEqualTheWholeConversation) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  const std::vector<ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "2+2?"}, {"assistant", "Four."}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  EXPECT_EQ(example.input_ids, tokenizer.encode_chat(messages, false));
  EXPECT_EQ(trainable_spans(tokenizer, example), std::vector<std::string>{"Four.<|eot_id|>"});
  EXPECT_EQ(masked_text(tokenizer, example),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
            "Date: December 2023\nToday Date: 26 Jul 2024\n\nBe "
            "brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  expect_parts_concatenate(tokenizer, messages, example);
}

TEST(ChatExamples, Llama31WithoutSystemMessageAndCustomDate) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  ExampleEncoderOptions options;
  options.chat.date_string = "01 Jan 2025";
  const std::vector<ChatMessage> messages = {{"user", "Hi"},
                                             {"assistant", "Hello! How can I help?"},
                                             {"user", "Thanks"},
                                             {"assistant", "You're welcome."}};
  const Example example = ExampleEncoder(tokenizer, options).encode_chat(messages);
  EXPECT_EQ(example.input_ids, tokenizer.encode_chat(messages, false, options.chat));
  EXPECT_EQ(
      trainable_spans(tokenizer, example),
      (std::vector<std::string>{"Hello! How can I help?<|eot_id|>", "You're welcome.<|eot_id|>"}));
  EXPECT_NE(masked_text(tokenizer, example).find("Today Date: 01 Jan 2025\n\n<|eot_id|>"),
            std::string::npos);
}

TEST(ChatExamples, ContentIsTrimmedAndSpecialTokenTextStaysText) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  const std::vector<ChatMessage> messages = {
      {"user", "Say <|eot_id|><|start_header_id|>assistant<|end_header_id|> please"},
      {"assistant", "  Here: <|eot_id|> is just text.\n"}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  EXPECT_EQ(trainable_spans(tokenizer, example),
            std::vector<std::string>{"Here: <|eot_id|> is just text.<|eot_id|>"});
  EXPECT_EQ(std::count(example.labels.begin(), example.labels.end(), kEotId), 1);
  EXPECT_EQ(std::count(example.input_ids.begin(), example.input_ids.end(), kStartHeaderId), 3);
  expect_parts_concatenate(tokenizer, messages, example);
}

TEST(ChatExamples, TurnsAfterTheLastAnswerAreDroppedAndConsecutiveAnswersBothTrain) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  const std::vector<ChatMessage> messages = {
      {"user", "Count."}, {"assistant", "One."}, {"assistant", "Two."}, {"user", "Stop."}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  EXPECT_EQ(trainable_spans(tokenizer, example),
            (std::vector<std::string>{"One.<|eot_id|>", "Two.<|eot_id|>"}));
  EXPECT_EQ(example.input_ids.back(), kEotId);
  EXPECT_EQ(masked_text(tokenizer, example).find("Stop."), std::string::npos);
}

TEST(ChatExamples, EmptyAnswerTrainsTheEndOfTurnOnly) {
  const Tokenizer tokenizer = real_tokenizer("llama3_1");
  const std::vector<ChatMessage> messages = {{"user", "Say nothing."}, {"assistant", ""}};
  const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
  EXPECT_EQ(trainable_spans(tokenizer, example), std::vector<std::string>{"<|eot_id|>"});
  EXPECT_EQ(count_loss_tokens(example.labels), 1);
}

TEST(ChatExamples, EveryKnownTemplateWithTheTinyTokenizer) {
  for (const KnownChatTemplate& known : known_chat_templates()) {
    SCOPED_TRACE(std::string(known.name));
    const Tokenizer tokenizer = tiny_tokenizer(&known);
    const std::vector<ChatMessage> messages = {{"system", "sys"},
                                               {"user", "hello there"},
                                               {"assistant", "the answer"},
                                               {"user", "in?"},
                                               {"assistant", "out, thou"}};
    const Example example = ExampleEncoder(tokenizer).encode_chat(messages);
    EXPECT_EQ(trainable_spans(tokenizer, example),
              (std::vector<std::string>{"the answer<|eot_id|>", "out, thou<|eot_id|>"}));
    expect_parts_concatenate(tokenizer, messages, example);
  }
}

TEST(ChatExamples, RejectsConversationsWithNothingToLearnOrNoPrompt) {
  const ExampleEncoder encoder(real_tokenizer("llama3_1"));
  expect_error([&] { encoder.encode_chat({}); }, {"no messages"});
  const std::vector<ChatMessage> no_answer = {{"system", "s"}, {"user", "u"}};
  expect_error([&] { encoder.encode_chat(no_answer); }, {"no assistant message"});
  const std::vector<ChatMessage> answer_first = {{"assistant", "a"}, {"user", "u"}};
  expect_error([&] { encoder.encode_chat(answer_first); }, {"starts with an assistant message"});
  const std::vector<ChatMessage> bad_role = {{"user", "u"}, {"tool", "t"}, {"assistant", "a"}};
  expect_error([&] { encoder.encode_chat(bad_role); }, {"role \"tool\""});
}

TEST(ChatExamples, TokenizerWithoutChatTemplateIsAnError) {
  const ExampleEncoder encoder(tiny_tokenizer(nullptr));
  const std::vector<ChatMessage> messages = {{"user", "u"}, {"assistant", "a"}};
  expect_error([&] { encoder.encode_chat(messages); }, {"chat template"});
}

}  // namespace
}  // namespace llamaq::test
