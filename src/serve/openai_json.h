// OpenAI response shapes: errors, chat.completion(.chunk), text_completion, usage, logprobs and
// the model list.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/batch_scheduler.h"
#include "serve/api_request.h"
#include "tokenizer/tokenizer.h"

namespace llamaq::serve {

using nlohmann::json;

json error_json(const ApiError& error);

json usage_json(int64_t prompt_tokens, int64_t completion_tokens);

// Identity shared by every object of one response.
struct ResponseMeta {
  std::string id;     // "chatcmpl-…" or "cmpl-…"
  int64_t created;    // unix seconds
  std::string model;  // the name the request resolved to
};

// A fresh response id with the endpoint's prefix and the current time.
ResponseMeta new_response_meta(Endpoint endpoint, const std::string& model);

// Logprob entries for tokens: chat's {"content": [...]} form.
json chat_logprobs_json(const Tokenizer& tokenizer, const std::vector<TokenEvent>& tokens);
// The completions endpoint's {"tokens", "token_logprobs", "top_logprobs", "text_offset"} form.
json completion_logprobs_json(const Tokenizer& tokenizer, const std::vector<TokenEvent>& tokens,
                              size_t text_offset);

const char* finish_reason_name(FinishReason reason);  // "stop" / "length"

// The whole answer of a non-streamed request.
json full_response_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                        const char* finish_reason, const json& logprobs, const json& usage);

// One streamed chunk: text (may be empty), finish reason (nullptr while running), logprobs
// (null when not asked), `first` adds the chat role.
json chunk_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                const char* finish_reason, const json& logprobs, bool first);
// The final usage-only chunk (stream_options.include_usage): empty choices.
json usage_chunk_json(Endpoint endpoint, const ResponseMeta& meta, const json& usage);

}  // namespace llamaq::serve
