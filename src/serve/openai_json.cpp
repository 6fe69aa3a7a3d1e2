#include "serve/openai_json.h"

#include <atomic>
#include <chrono>
#include <random>

#include <fmt/format.h>

namespace llamaq::serve {
namespace {

// A random hex id: unique per process run and per request.
std::string random_id() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return fmt::format("{:016x}{:08x}", salt, counter.fetch_add(1));
}

const char* object_name(Endpoint endpoint, bool chunk) {
  if (endpoint == Endpoint::Completion) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json base_object(Endpoint endpoint, const ResponseMeta& meta, bool chunk) {
  return {{"id", meta.id},
          {"object", object_name(endpoint, chunk)},
          {"created", meta.created},
          {"model", meta.model},
          {"system_fingerprint", "llamaq"}};
}

// A token as text for logprobs (lossy for partial UTF-8) and its raw bytes.
json token_entry(const Tokenizer& tokenizer, int32_t id, float logprob) {
  const std::string& raw = tokenizer.token_bytes(id);
  json bytes = json::array();
  for (unsigned char c : raw)
    bytes.push_back(int(c));
  const int32_t ids[1] = {id};
  return {{"token", tokenizer.decode(ids, /*skip_special=*/false)},
          {"logprob", logprob},
          {"bytes", bytes}};
}

}  // namespace

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type()},
            {"param", e.param().empty() ? json() : json(e.param())},
            {"code", e.code().empty() ? json() : json(e.code())}}}};
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

ResponseMeta new_response_meta(Endpoint endpoint, const std::string& model) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return {(endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-") + random_id(),
          std::chrono::duration_cast<std::chrono::seconds>(now).count(), model};
}

json chat_logprobs_json(const Tokenizer& tokenizer, const std::vector<TokenEvent>& tokens) {
  json content = json::array();
  for (const TokenEvent& t : tokens) {
    json entry = token_entry(tokenizer, t.id, t.logprob);
    json top = json::array();
    for (const TokenLogprob& alt : t.top)
      top.push_back(token_entry(tokenizer, alt.id, alt.logprob));
    entry["top_logprobs"] = std::move(top);
    content.push_back(std::move(entry));
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

json completion_logprobs_json(const Tokenizer& tokenizer, const std::vector<TokenEvent>& tokens,
                              size_t text_offset) {
  json texts = json::array(), logprobs = json::array(), tops = json::array(),
       offsets = json::array();
  for (const TokenEvent& t : tokens) {
    const int32_t ids[1] = {t.id};
    const std::string text = tokenizer.decode(ids, /*skip_special=*/false);
    texts.push_back(text);
    logprobs.push_back(t.logprob);
    json top = json::object();
    for (const TokenLogprob& alt : t.top) {
      const int32_t alt_ids[1] = {alt.id};
      top[tokenizer.decode(alt_ids, false)] = alt.logprob;
    }
    tops.push_back(std::move(top));
    offsets.push_back(text_offset);
    text_offset += text.size();
  }
  return {{"tokens", texts},
          {"token_logprobs", logprobs},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

const char* finish_reason_name(FinishReason reason) {
  return reason == FinishReason::Length ? "length" : "stop";
}

json full_response_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                        const char* finish_reason, const json& logprobs, const json& usage) {
  json out = base_object(endpoint, meta, /*chunk=*/false);
  json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", logprobs}};
  if (endpoint == Endpoint::Chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}};
  } else {
    choice["text"] = text;
  }
  out["choices"] = json::array({std::move(choice)});
  out["usage"] = usage;
  return out;
}

json chunk_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                const char* finish_reason, const json& logprobs, bool first) {
  json out = base_object(endpoint, meta, /*chunk=*/true);
  json choice = {{"index", 0},
                 {"finish_reason", finish_reason ? json(finish_reason) : json()},
                 {"logprobs", logprobs}};
  if (endpoint == Endpoint::Chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  out["choices"] = json::array({std::move(choice)});
  return out;
}

json usage_chunk_json(Endpoint endpoint, const ResponseMeta& meta, const json& usage) {
  json out = base_object(endpoint, meta, /*chunk=*/true);
  out["choices"] = json::array();
  out["usage"] = usage;
  return out;
}

}  // namespace llamaq::serve
