#include "runtime/generate.h"

#include <algorithm>

#include "core/error.h"
#include "core/resources.h"

namespace llamaq {

GenerateResult generate(LlamaModel& model, KvCache& cache, int seq, std::span<const int32_t> prompt,
                        const GenerateOptions& options,
                        const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) fail("generate: the prompt is empty (give at least one token)");
  if (options.max_new_tokens < 0) fail("generate: max new tokens must be >= 0");
  if (options.prefill_chunk <= 0) fail("generate: prefill chunk must be > 0");
  // The last sampled token is never fed back, so it needs no cache slot.
  const int64_t positions =
      cache.length(seq) + int64_t(prompt.size()) + std::max<int64_t>(0, options.max_new_tokens - 1);
  if (positions > cache.capacity_tokens()) {
    fail("generate: {} context + {} prompt + {} new tokens do not fit a context of {} tokens",
         cache.length(seq), prompt.size(), options.max_new_tokens, cache.capacity_tokens());
  }

  GenerateResult result;
  result.prompt_tokens = int64_t(prompt.size());
  Sampler sampler(options.sampling);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  // Plain greedy decoding picks the argmax on the device and copies one id back; everything else
  // samples on the host from the copied logits.
  const bool device_greedy =
      options.sampling.temperature == 0.0f && options.sampling.repetition_penalty == 1.0f;
  Backend& backend = model.backend();
  Tensor next_id = device_greedy ? backend.alloc(DType::I32, {1}) : Tensor();
  auto next_token = [&](std::span<const int32_t> ids) {
    const Tensor logits = model.forward(cache, seq, ids, LogitsFor::LastToken);
    int32_t token = 0;
    if (device_greedy) {
      backend.argmax(logits, next_id);
      backend.copy_to_host(next_id, &token);
    } else {
      std::vector<float> host(size_t(logits.numel()));
      backend.copy_to_host(logits, host.data());
      token = sampler.sample(host, history);
    }
    return token;
  };
  const Stopwatch prompt_clock;
  int32_t token = 0;
  for (size_t begin = 0; begin < prompt.size(); begin += size_t(options.prefill_chunk)) {
    const size_t count = std::min(prompt.size() - begin, size_t(options.prefill_chunk));
    if (begin + count < prompt.size()) {
      model.forward(cache, seq, prompt.subspan(begin, count), LogitsFor::None);
    } else {
      token = next_token(prompt.subspan(begin, count));
    }
  }
  result.prompt_seconds = prompt_clock.seconds();

  const Stopwatch generate_clock;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    if (step > 0) {
      const int32_t previous[1] = {result.tokens.back()};
      token = next_token(previous);
    }
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
  }
  result.generate_seconds = generate_clock.seconds();
  return result;
}

}  // namespace llamaq
