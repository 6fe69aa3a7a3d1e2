// Fuzz target: arbitrary bytes as the body of every llamaq serve endpoint (chat, completions,
// tokenize, detokenize). Only serve::ApiError may escape, always a 400 naming a problem; a body
// that parses must satisfy the invariants the handlers rely on.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "serve/api_request.h"

namespace {

void check(const llamaq::serve::GenerationRequest& r) {
  if (r.max_tokens && *r.max_tokens < 1) std::abort();
  if (!(r.temperature >= 0 && r.temperature <= 2) || !(r.top_p >= 0 && r.top_p <= 1)) std::abort();
  if (r.top_logprobs < 0 || r.top_logprobs > 20 || r.stop.size() > 4) std::abort();
  if (r.endpoint == llamaq::serve::Endpoint::Chat && r.messages.empty()) std::abort();
}

template <typename Fn>
void expect_only_api_errors(Fn&& fn) {
  try {
    fn();
  } catch (const llamaq::serve::ApiError& e) {
    if (e.status() != 400 || std::string_view(e.what()).empty()) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  expect_only_api_errors([&] { check(llamaq::serve::parse_chat_request(body)); });
  expect_only_api_errors([&] { check(llamaq::serve::parse_completion_request(body)); });
  expect_only_api_errors([&] { llamaq::serve::parse_tokenize_request(body); });
  expect_only_api_errors([&] { llamaq::serve::parse_detokenize_request(body); });
  return 0;
}
