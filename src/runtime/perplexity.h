// Perplexity over a token sequence with a sliding window, and the divergence of a model from a
// base model on the same windows (KL and top-1 agreement), as llama.cpp's perplexity tool and
// the Hugging Face perplexity guide measure quantization quality.
#pragma once

#include <functional>
#include <span>

#include "model/llama_model.h"

namespace llamaq {

struct PerplexityOptions {
  int64_t ctx = 512;     // tokens of context a window holds
  int64_t stride = 0;    // a new window every `stride` tokens (0 = ctx: no overlap)
  int64_t batch = 64;    // tokens per forward call (bounds the logits held at once)
};

struct PerplexityResult {
  int64_t windows = 0;
  int64_t scored = 0;      // tokens predicted (every token but the first, each once)
  double nll_sum = 0;      // sum of -log p(token | context), natural log
  double kl_sum = 0;       // sum over scored tokens of KL(base || model), with a base model
  int64_t top1_agree = 0;  // scored positions where both models' argmax agree
  double perplexity() const;
  double mean_kl() const { return scored ? kl_sum / double(scored) : 0; }
  double top1_agreement() const { return scored ? double(top1_agree) / double(scored) : 0; }
};

// Windows [begin, begin + ctx) start every stride tokens; each scores the tokens no earlier
// window scored, so every token after the first is predicted exactly once with up to ctx tokens
// of context. `base` (optional) is evaluated on the same windows for KL and top-1 agreement.
// `on_window(done, total)` reports progress.
PerplexityResult evaluate_perplexity(LlamaModel& model, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options, LlamaModel* base = nullptr,
                                     const std::function<void(int64_t, int64_t)>& on_window = {});

}  // namespace llamaq
