// Request parsing for the OpenAI endpoints: every field read with its type and range checked,
// errors as 400 naming the field, unknown fields ignored, bounded nesting.
#include <gtest/gtest.h>

#include <cctype>

#include "serve/api_request.h"

namespace llamaq::serve {
namespace {

TEST(ApiRequest, ChatReadsEveryField) {
  const GenerationRequest r = parse_chat_request(R"({
    "model": "m", "messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null}],
    "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0.5, "top_p": 0.9, "seed": -3,
    "stop": "x", "stream": true, "stream_options": {"include_usage": true}, "logprobs": true,
    "top_logprobs": 2, "presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {"12": -100},
    "n": 1, "some_new_field": {"ignored": [1, 2, 3]}})");
  EXPECT_EQ(r.endpoint, Endpoint::Chat);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");  // developer is OpenAI's newer name for it
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.max_tokens, 7);  // max_completion_tokens wins over the deprecated max_tokens
  EXPECT_FLOAT_EQ(r.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.top_p, 0.9f);
  EXPECT_EQ(r.seed, uint64_t(-3));
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_FLOAT_EQ(r.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.frequency_penalty, -1.0f);
  EXPECT_EQ(r.logit_bias.at(12), -100.0f);
}

TEST(ApiRequest, DefaultsFollowOpenAI) {
  const GenerationRequest chat =
      parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_FALSE(chat.max_tokens.has_value());  // until the context is full
  EXPECT_FLOAT_EQ(chat.temperature, 1.0f);
  EXPECT_FALSE(chat.seed.has_value());
  EXPECT_FALSE(chat.stream);
  const GenerationRequest text = parse_completion_request(R"({"prompt": "hi", "logprobs": 3})");
  EXPECT_EQ(text.max_tokens, 16);  // the completions endpoint's default
  EXPECT_TRUE(text.logprobs);
  EXPECT_EQ(text.top_logprobs, 3);
  EXPECT_EQ(parse_completion_request(R"({"prompt": ["one"]})").prompt, "one");
  EXPECT_EQ(parse_completion_request(R"({"prompt": [1, 2, 3]})").prompt_ids,
            (std::vector<int32_t>{1, 2, 3}));
}

struct BadCase {
  const char* body;
  const char* param;
  const char* message_part;
};

// How gtest (and so the CTest name) shows a case: the body.
void PrintTo(const BadCase& c, std::ostream* os) { *os << c.body; }

class ApiRequestBad : public ::testing::TestWithParam<BadCase> {};

TEST_P(ApiRequestBad, Is400NamingTheField) {
  const BadCase& c = GetParam();
  try {
    parse_chat_request(c.body);
    FAIL() << "accepted: " << c.body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.type(), "invalid_request_error");
    EXPECT_EQ(e.param(), c.param) << e.what();
    EXPECT_NE(std::string(e.what()).find(c.message_part), std::string::npos) << e.what();
  }
}

#define MSGS R"("messages": [{"role": "user", "content": "hi"}])"
INSTANTIATE_TEST_SUITE_P(
    Cases, ApiRequestBad,
    ::testing::Values(
        BadCase{"", "", "not valid JSON"}, BadCase{"{", "", "not valid JSON"},
        BadCase{"[]", "", "JSON object"}, BadCase{"{}", "messages", "required"},
        BadCase{R"({"messages": []})", "messages", "non-empty"},
        BadCase{R"({"messages": [1]})", "messages[0]", "object"},
        BadCase{R"({"messages": [{"role": 5}]})", "messages[0].role", "string"},
        BadCase{R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role", "tool"},
        BadCase{R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
                "messages[0].content", "text"},
        BadCase{"{" MSGS R"(, "temperature": "1"})", "temperature", "number"},
        BadCase{"{" MSGS R"(, "temperature": -0.1})", "temperature", "[0, 2]"},
        BadCase{"{" MSGS R"(, "top_p": 1.5})", "top_p", "[0, 1]"},
        BadCase{"{" MSGS R"(, "max_tokens": 0})", "max_tokens", "[1,"},
        BadCase{"{" MSGS R"(, "max_tokens": -1})", "max_tokens", "[1,"},
        BadCase{"{" MSGS R"(, "max_tokens": 1e30})", "max_tokens", "integer"},
        BadCase{"{" MSGS R"(, "max_tokens": 18446744073709551615})", "max_tokens", "[1,"},
        BadCase{"{" MSGS R"(, "seed": 1.5})", "seed", "integer"},
        BadCase{"{" MSGS R"(, "stop": 3})", "stop", "string"},
        BadCase{"{" MSGS R"(, "stop": [""]})", "stop", "non-empty"},
        BadCase{"{" MSGS R"(, "stream": "yes"})", "stream", "boolean"},
        BadCase{"{" MSGS R"(, "stream_options": {"include_usage": true}})", "stream_options",
                "stream"},
        BadCase{"{" MSGS R"(, "n": 3})", "n", "n = 1"},
        BadCase{"{" MSGS R"(, "top_logprobs": 21, "logprobs": true})", "top_logprobs", "[0, 20]"},
        BadCase{"{" MSGS R"(, "logit_bias": {"abc": 1}})", "logit_bias", "abc"},
        BadCase{"{" MSGS R"(, "logit_bias": {"5": 101}})", "logit_bias", "[-100, 100]"},
        BadCase{"{" MSGS R"(, "presence_penalty": 2.5})", "presence_penalty", "[-2, 2]"}),
    [](const ::testing::TestParamInfo<BadCase>& case_info) {
      // "3_messages_0__role": the case number and the field it is about.
      std::string name = std::to_string(case_info.index) + "_" +
                         (*case_info.param.param ? case_info.param.param : "body");
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });
#undef MSGS

TEST(ApiRequest, NestingIsBoundedButBracketsInStringsAreText) {
  std::string deep = R"({"messages": [{"role": "user", "content": "hi"}], "x": )";
  deep += std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_THROW(parse_chat_request(deep), ApiError);
  const std::string text(1000, '[');
  const GenerationRequest r =
      parse_chat_request(R"({"messages": [{"role": "user", "content": ")" + text + R"("}]})");
  EXPECT_EQ(r.messages[0].content, text);
}

TEST(ApiRequest, CompletionPromptShapes) {
  EXPECT_THROW(parse_completion_request(R"({"prompt": ["a", "b"]})"), ApiError);
  EXPECT_THROW(parse_completion_request(R"({"prompt": [1, -2]})"), ApiError);
  EXPECT_THROW(parse_completion_request(R"({"prompt": []})"), ApiError);
  EXPECT_THROW(parse_completion_request(R"({"prompt": "a", "echo": true})"), ApiError);
  EXPECT_THROW(parse_completion_request(R"({"prompt": "a", "logprobs": 6})"), ApiError);
}

TEST(ApiRequest, TokenizeBodies) {
  const TokenizeRequest t = parse_tokenize_request(R"({"content": "x", "add_special": true})");
  EXPECT_EQ(t.content, "x");
  EXPECT_TRUE(t.add_special);
  EXPECT_FALSE(t.with_pieces);
  EXPECT_EQ(parse_detokenize_request(R"({"tokens": [5, 6]})"), (std::vector<int32_t>{5, 6}));
  EXPECT_THROW(parse_detokenize_request(R"({"tokens": [-1]})"), ApiError);
  EXPECT_THROW(parse_detokenize_request(R"({"tokens": "5"})"), ApiError);
  EXPECT_THROW(parse_tokenize_request(R"({"content": 5})"), ApiError);
}

}  // namespace
}  // namespace llamaq::serve
