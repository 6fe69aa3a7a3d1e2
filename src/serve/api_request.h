// OpenAI request bodies: /v1/chat/completions and /v1/completions parsed into one generation
// request, every field type- and range-checked. Unknown fields are ignored, as OpenAI does.
// Every problem is an ApiError (400 invalid_request_error) naming the field.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_format.h"

namespace llamaq::serve {

// An error response in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, std::string message, std::string param = {},
           std::string code = {})
      : std::runtime_error(message),
        status_(status),
        type_(std::move(type)),
        param_(std::move(param)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string type_, param_, code_;
};

// A 400 invalid_request_error about `param`.
[[noreturn]] void bad_request(const std::string& param, const std::string& message);

enum class Endpoint { Chat, Completion };

struct GenerationRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;                  // empty: the base model
  std::vector<ChatMessage> messages;  // chat
  std::string prompt;                 // completion, as text
  std::vector<int32_t> prompt_ids;    // completion, given as token ids
  std::optional<int64_t> max_tokens;  // absent: until the context is full
  float temperature = 1.0f;           // OpenAI's default
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;  // up to 4 strings
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;
  int top_logprobs = 0;  // 0..20
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::map<int32_t, float> logit_bias;  // token id -> bias in [-100, 100]
  std::string user;
};

// Bodies nested deeper than this are refused before parsing (a bound on parser work).
constexpr int kMaxJsonDepth = 64;

GenerationRequest parse_chat_request(std::string_view body);
GenerationRequest parse_completion_request(std::string_view body);

// POST /tokenize {"content": str, "add_special": bool, "with_pieces": bool} and
// POST /detokenize {"tokens": [ids]} as llama-server has them.
struct TokenizeRequest {
  std::string content;
  bool add_special = false;
  bool with_pieces = false;
};
TokenizeRequest parse_tokenize_request(std::string_view body);
std::vector<int32_t> parse_detokenize_request(std::string_view body);

}  // namespace llamaq::serve
