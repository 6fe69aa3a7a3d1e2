// LlamaForCausalLM forward pass (specs §4.3), written once against the backend op interface.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace llamaq {

enum class LogitsFor { LastToken, AllTokens };

// The next tokens of one sequence in a batched forward pass.
struct SequenceInput {
  int seq;
  std::span<const int32_t> ids;
};

class LlamaModel {
 public:
  // Uploads the weights to the backend (a no-op for memory-mapped weights on the CPU).
  LlamaModel(const LlamaConfig& config, const LlamaWeights& host_weights, Backend& backend);

  const LlamaConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }

  // Runs the next tokens of sequence `seq` (positions cache.length(seq) onwards), appending
  // their keys and values to the cache. Returns logits on the backend:
  // [1, vocab] f32 for LastToken, [ids.size(), vocab] f32 for AllTokens.
  Tensor forward(KvCache& cache, int seq, std::span<const int32_t> ids, LogitsFor which);

  // Several sequences at once (continuous batching): the projections run over all their tokens
  // together, so each weight is read once per step; attention runs per sequence over its own
  // cache blocks. Logits: one row per sequence (its last token) for LastToken, [total tokens,
  // vocab] in input order for AllTokens.
  Tensor forward_batch(KvCache& cache, std::span<const SequenceInput> items, LogitsFor which);

  // forward() with the logits copied to the host, row-major [rows, vocab].
  std::vector<float> forward_to_host(KvCache& cache, int seq, std::span<const int32_t> ids,
                                     LogitsFor which);

 private:
  struct Activations;
  struct BatchSlice {
    int seq;
    int64_t begin;  // first row of this sequence's tokens in the batch
    int64_t count;
  };
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out);
  void run_layer(int layer, Activations& act, const Tensor& positions, KvCache& cache,
                 std::span<const BatchSlice> slices);

  LlamaConfig config_;
  Backend& backend_;
  LlamaWeights weights_;  // on the backend
  Tensor inv_freq_;       // [head_dim / 2] f32 on the backend
};

}  // namespace llamaq
