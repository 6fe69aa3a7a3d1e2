#include "runtime/generate.h"

#include <algorithm>

#include "core/error.h"
#include "core/resources.h"

namespace llamaq {

GenerateResult generate(LlamaModel& model, KvCache& cache, int seq,
                        std::span<const int32_t> prompt, const GenerateOptions& options,
                        const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) fail("generate: the prompt is empty (give at least one token)");
  if (options.max_new_tokens < 0) fail("generate: max new tokens must be >= 0");
  if (options.prefill_chunk <= 0) fail("generate: prefill chunk must be > 0");
  // The last sampled token is never fed back, so it needs no cache slot.
  const int64_t positions = cache.length(seq) + int64_t(prompt.size()) +
                            std::max<int64_t>(0, options.max_new_tokens - 1);
  if (positions > cache.capacity_tokens()) {
    fail("generate: {} context + {} prompt + {} new tokens do not fit a context of {} tokens",
         cache.length(seq), prompt.size(), options.max_new_tokens, cache.capacity_tokens());
  }

  GenerateResult result;
  result.prompt_tokens = int64_t(prompt.size());
  Sampler sampler(options.sampling);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  const Stopwatch prompt_clock;
  std::vector<float> logits;
  for (size_t begin = 0; begin < prompt.size(); begin += size_t(options.prefill_chunk)) {
    const size_t count = std::min(prompt.size() - begin, size_t(options.prefill_chunk));
    logits = model.forward_to_host(cache, seq, prompt.subspan(begin, count), LogitsFor::LastToken);
  }
  result.prompt_seconds = prompt_clock.seconds();

  const Stopwatch generate_clock;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const int32_t token = sampler.sample(logits, history);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) !=
        options.stop_ids.end()) {
      result.stop_token = token;
      result.reason = StopReason::StopToken;
      break;
    }
    result.tokens.push_back(token);
    history.push_back(token);
    if (on_token && !on_token(token)) {
      result.reason = StopReason::Cancelled;
      break;
    }
    if (step + 1 == options.max_new_tokens) break;
    const int32_t next[1] = {token};
    logits = model.forward_to_host(cache, seq, next, LogitsFor::LastToken);
  }
  result.generate_seconds = generate_clock.seconds();
  return result;
}

}  // namespace llamaq
