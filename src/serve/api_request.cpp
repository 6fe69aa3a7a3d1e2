#include "serve/api_request.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace llamaq::serve {
namespace {

using nlohmann::json;

// Deepest [ / { nesting outside strings; stops counting past the limit.
int nesting_depth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{')
      deepest = std::max(deepest, ++depth);
    else if (c == ']' || c == '}')
      --depth;
    if (deepest > kMaxJsonDepth) break;
  }
  return deepest;
}

json parse_body(std::string_view body) {
  if (nesting_depth(body) > kMaxJsonDepth) {
    bad_request("", fmt::format("the request body nests deeper than {} levels", kMaxJsonDepth));
  }
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    bad_request("",
                "the request body is not valid JSON (send a JSON object with "
                "Content-Type: application/json)");
  }
  if (!j.is_object()) bad_request("", "the request body must be a JSON object");
  return j;
}

// The field, or nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& j, const char* name) {
  const auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string type_name(const json& v) {
  return v.type_name();
}

bool get_bool(const json& j, const char* name, bool fallback) {
  const json* v = field(j, name);
  if (!v) return fallback;
  if (!v->is_boolean())
    bad_request(name, fmt::format("'{}' must be a boolean, got {}", name, type_name(*v)));
  return v->get<bool>();
}

double get_number(const json& j, const char* name, double fallback, double lo, double hi) {
  const json* v = field(j, name);
  if (!v) return fallback;
  if (!v->is_number())
    bad_request(name, fmt::format("'{}' must be a number, got {}", name, type_name(*v)));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    bad_request(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
  return x;
}

std::optional<int64_t> get_integer(const json& j, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(j, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) {
    bad_request(name, fmt::format("'{}' must be an integer, got {}", name, type_name(*v)));
  }
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
    bad_request(name, fmt::format("'{}' must be in [{}, {}]", name, lo, hi));
  }
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi)
    bad_request(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
  return x;
}

std::string get_string(const json& j, const char* name) {
  const json* v = field(j, name);
  if (!v) return {};
  if (!v->is_string())
    bad_request(name, fmt::format("'{}' must be a string, got {}", name, type_name(*v)));
  return v->get<std::string>();
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_request(param, "content must be a string or an array of text parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      bad_request(param,
                  "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& j) {
  const json* v = field(j, "messages");
  if (!v) bad_request("messages", "'messages' is required");
  if (!v->is_array() || v->empty()) bad_request("messages", "'messages' must be a non-empty array");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad_request(param, param + " must be an object");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad_request(param + ".role", param + ".role must be a string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r != "system" && r != "user" && r != "assistant") {
      bad_request(param + ".role", fmt::format("{}.role '{}' is not supported (system, developer, "
                                               "user or assistant)",
                                               param, r));
    }
    const json* content = field(m, "content");
    messages.push_back({r, content ? message_content(*content, param + ".content") : ""});
  }
  return messages;
}

std::vector<std::string> parse_stop(const json& j) {
  const json* v = field(j, "stop");
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array() || v->size() > 4)
    bad_request("stop", "'stop' must be a string or an array of up to 4 strings");
  std::vector<std::string> stop;
  for (const json& s : *v) {
    if (!s.is_string() || s.get<std::string>().empty()) {
      bad_request("stop", "every 'stop' entry must be a non-empty string");
    }
    stop.push_back(s.get<std::string>());
  }
  return stop;
}

std::map<int32_t, float> parse_logit_bias(const json& j) {
  const json* v = field(j, "logit_bias");
  if (!v) return {};
  if (!v->is_object())
    bad_request("logit_bias", "'logit_bias' must be an object of token id -> bias");
  std::map<int32_t, float> bias;
  for (const auto& [key, value] : v->items()) {
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(key, &used);
      if (used != key.size()) id = -1;
    } catch (const std::exception&) {
      id = -1;
    }
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      bad_request("logit_bias", fmt::format("logit_bias key '{}' is not a token id", key));
    }
    if (!value.is_number() || !(value.get<double>() >= -100 && value.get<double>() <= 100)) {
      bad_request("logit_bias", fmt::format("logit_bias[{}] must be a number in [-100, 100]", key));
    }
    bias[int32_t(id)] = value.get<float>();
  }
  return bias;
}

// Fields the two endpoints share.
void parse_common(const json& j, GenerationRequest& r) {
  r.model = get_string(j, "model");
  r.temperature = float(get_number(j, "temperature", 1.0, 0.0, 2.0));
  r.top_p = float(get_number(j, "top_p", 1.0, 0.0, 1.0));
  if (const auto seed = get_integer(j, "seed", std::numeric_limits<int64_t>::min(),
                                    std::numeric_limits<int64_t>::max())) {
    r.seed = uint64_t(*seed);
  }
  r.stop = parse_stop(j);
  r.stream = get_bool(j, "stream", false);
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) bad_request("stream_options", "'stream_options' must be an object");
    if (!r.stream)
      bad_request("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  if (const auto n = get_integer(j, "n", 1, 128); n && *n != 1) {
    bad_request("n", "only n = 1 is supported (send one request per completion)");
  }
  r.presence_penalty = float(get_number(j, "presence_penalty", 0.0, -2.0, 2.0));
  r.frequency_penalty = float(get_number(j, "frequency_penalty", 0.0, -2.0, 2.0));
  r.logit_bias = parse_logit_bias(j);
  r.user = get_string(j, "user");
}

// max_tokens bound before the context check: the context check gives the real limit with
// numbers; this only keeps absurd values out of integer arithmetic.
constexpr int64_t kMaxTokensBound = int64_t(1) << 40;

}  // namespace

void bad_request(const std::string& param, const std::string& message) {
  throw ApiError(400, "invalid_request_error", message, param);
}

GenerationRequest parse_chat_request(std::string_view body) {
  const json j = parse_body(body);
  GenerationRequest r;
  r.endpoint = Endpoint::Chat;
  r.messages = parse_messages(j);
  parse_common(j, r);
  r.max_tokens = get_integer(j, "max_completion_tokens", 1, kMaxTokensBound);
  if (!r.max_tokens) r.max_tokens = get_integer(j, "max_tokens", 1, kMaxTokensBound);
  r.logprobs = get_bool(j, "logprobs", false);
  r.top_logprobs = int(get_integer(j, "top_logprobs", 0, 20).value_or(0));
  if (r.top_logprobs > 0 && !r.logprobs) {
    bad_request("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  }
  return r;
}

GenerationRequest parse_completion_request(std::string_view body) {
  const json j = parse_body(body);
  GenerationRequest r;
  r.endpoint = Endpoint::Completion;
  const json* p = field(j, "prompt");
  if (!p) bad_request("prompt", "'prompt' is required");
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
  } else if (p->is_array() && !p->empty() && std::all_of(p->begin(), p->end(), [](const json& x) {
               return x.is_number_integer();
             })) {
    for (const json& x : *p) {
      const int64_t id = x.get<int64_t>();
      if (id < 0 || id > std::numeric_limits<int32_t>::max())
        bad_request("prompt", fmt::format("token id {} is out of range", id));
      r.prompt_ids.push_back(int32_t(id));
    }
  } else {
    bad_request("prompt",
                "'prompt' must be a string, an array of one string, or an array of token ids");
  }
  parse_common(j, r);
  r.max_tokens = get_integer(j, "max_tokens", 1, kMaxTokensBound);
  if (!r.max_tokens) r.max_tokens = 16;  // the completions endpoint's documented default
  if (const auto lp = get_integer(j, "logprobs", 0, 5)) {
    r.logprobs = true;
    r.top_logprobs = int(*lp);
  }
  if (get_bool(j, "echo", false)) bad_request("echo", "'echo' is not supported");
  if (const auto best_of = get_integer(j, "best_of", 1, 20); best_of && *best_of != 1) {
    bad_request("best_of", "only best_of = 1 is supported");
  }
  if (!get_string(j, "suffix").empty()) bad_request("suffix", "'suffix' is not supported");
  return r;
}

TokenizeRequest parse_tokenize_request(std::string_view body) {
  const json j = parse_body(body);
  TokenizeRequest r;
  const json* c = field(j, "content");
  if (!c || !c->is_string()) bad_request("content", "'content' must be a string");
  r.content = c->get<std::string>();
  r.add_special = get_bool(j, "add_special", false);
  r.with_pieces = get_bool(j, "with_pieces", false);
  return r;
}

std::vector<int32_t> parse_detokenize_request(std::string_view body) {
  const json j = parse_body(body);
  const json* t = field(j, "tokens");
  if (!t || !t->is_array()) bad_request("tokens", "'tokens' must be an array of token ids");
  std::vector<int32_t> ids;
  for (const json& x : *t) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 ||
        x.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      bad_request("tokens", "'tokens' must hold non-negative integer token ids");
    }
    ids.push_back(int32_t(x.get<int64_t>()));
  }
  return ids;
}

}  // namespace llamaq::serve
