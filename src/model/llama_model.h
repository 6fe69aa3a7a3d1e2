// LlamaForCausalLM forward pass (specs §4.3), written once against the backend op interface.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace llamaq {

// Which logits a forward pass computes: the last token's of each sequence, every token's, or none
// (a prompt chunk that only fills the KV cache: no final norm, no LM head).
enum class LogitsFor { LastToken, AllTokens, None };

// Whether upload_weights copies the LoRA branches of the host weights (inference with merged-in
// adapters) or leaves them behind (a training model, which owns its adapters).
enum class LoraBranches { Upload, Drop };

// The weights on `backend` (for the CPU backend, the host tensors themselves); a tied LM head
// stays the uploaded embedding table.
LlamaWeights upload_weights(Backend& backend, const LlamaWeights& host,
                            LoraBranches lora = LoraBranches::Upload);

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
  // [1, vocab] f32 for LastToken, [ids.size(), vocab] f32 for AllTokens, an empty tensor for None.
  Tensor forward(KvCache& cache, int seq, std::span<const int32_t> ids, LogitsFor which);

  // Several sequences at once (continuous batching): the projections run over all their tokens
  // together, so each weight is read once per step; attention runs per sequence over its own
  // cache blocks. Logits: one row per sequence (its last token) for LastToken, [total tokens,
  // vocab] in input order for AllTokens. Decode steps (one token per sequence, LastToken) replay
  // a recorded graph on backends that have graphs; their logits tensor is reused, so it holds
  // this step's logits until the next forward call.
  Tensor forward_batch(KvCache& cache, std::span<const SequenceInput> items, LogitsFor which);

  // Graphs for decode steps are on by default; off runs every op eagerly (profiling, tests).
  void set_graphs_enabled(bool enabled) { graphs_enabled_ = enabled; }

  // forward() with the logits copied to the host, row-major [rows, vocab].
  std::vector<float> forward_to_host(KvCache& cache, int seq, std::span<const int32_t> ids,
                                     LogitsFor which);

 private:
  struct Activations;
  // A recorded decode step for one batch size over one cache (decode_graph.cpp).
  struct DecodeGraph {
    uint64_t cache_id = 0;
    int64_t max_blocks = 0;
    Tensor inputs;  // [batch * (2 + max_blocks)] i32: ids, positions, one block table per row
    Tensor logits;  // [batch, vocab] f32
    std::unique_ptr<OpGraph> graph;
  };
  struct BatchSlice {
    int seq;        // -1: several single-token sequences, with one table row each
    int64_t begin;  // first row of this sequence's tokens in the batch
    int64_t count;
    Tensor table;  // [max blocks] or [count, max blocks] i32; empty: the sequence's own
  };
  // The attention calls of a batch: each multi-token sequence alone; a run of single-token
  // sequences together, with their block tables as rows of one tensor (one launch, not one per
  // sequence).
  std::vector<BatchSlice> attention_groups(KvCache& cache, std::span<const BatchSlice> slices);
  void project_add(const Tensor& x,        // [n, in] f32
                   const LinearWeight& w,  // [out, in]
                   Tensor& residual,       // [n, out] f32, += x w^T
                   Tensor& scratch);       // [n, out] f32
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out);
  void run_layer(int layer, Activations& act, const Tensor& positions, KvCache& cache,
                 std::span<const BatchSlice> groups);
  // Embedding, layers, final norm and LM head of one batch into `logits` (rows as forward_batch).
  void run_forward(KvCache& cache, const Tensor& token_ids,  // [n] i32
                   const Tensor& positions,                  // [n] i32
                   std::span<const BatchSlice> slices, std::span<const BatchSlice> groups,
                   LogitsFor which,
                   Tensor& logits);  // [rows, vocab] f32 (untouched for None)
  bool graph_eligible(std::span<const SequenceInput> items, LogitsFor which) const;
  // Replays (recording it first when needed) the decode graph for this batch size and cache.
  Tensor decode_with_graph(KvCache& cache, std::span<const BatchSlice> slices,
                           std::span<const int32_t> host_ids,
                           std::span<const int32_t> host_positions);

  LlamaConfig config_;
  Backend& backend_;
  LlamaWeights weights_;  // on the backend
  Tensor inv_freq_;       // [head_dim / 2] f32 on the backend
  bool graphs_enabled_ = true;
  bool graphs_supported_ = true;  // false once the backend declined to record
  std::map<int64_t, std::unique_ptr<DecodeGraph>> decode_graphs_;  // by batch size
};

}  // namespace llamaq
