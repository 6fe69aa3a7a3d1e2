// The generation loop for one sequence: prompt processing in chunks, then one token at a time
// through the KV cache, sampling each token and streaming it to a callback.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama_model.h"
#include "runtime/sampler.h"

namespace llamaq {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  std::vector<int32_t> stop_ids;  // generation ends when one is sampled (it is not streamed)
  SamplingParams sampling;
  int64_t prefill_chunk = 512;    // prompt tokens per forward call (bounds activation memory)
};

enum class StopReason { StopToken, MaxTokens, Cancelled };

struct GenerateResult {
  std::vector<int32_t> tokens;           // generated tokens, without the stop token
  std::optional<int32_t> stop_token;     // the stop token that ended generation, if any
  StopReason reason = StopReason::MaxTokens;
  int64_t prompt_tokens = 0;
  double prompt_seconds = 0;    // prompt processing up to the first logits
  double generate_seconds = 0;  // every later decode step and sampling
};

// Streams each generated token to `on_token`; returning false stops generation (Cancelled).
// The sequence's cache must already hold any earlier context; the prompt is appended to it.
GenerateResult generate(LlamaModel& model, KvCache& cache, int seq,
                        std::span<const int32_t> prompt, const GenerateOptions& options,
                        const std::function<bool(int32_t)>& on_token);

}  // namespace llamaq
