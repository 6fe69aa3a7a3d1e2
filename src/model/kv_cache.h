// Paged KV cache: per layer, a pool of fixed-size blocks of keys and values; each sequence owns a
// block table mapping its positions to blocks. Many sequences share one pool without
// fragmentation; a single sequence is the one-request case. Storage lives on the backend.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace llamaq {

class KvCache {
 public:
  // Room for `capacity_tokens` tokens in all, in blocks of `block_size` positions, stored as
  // `dtype` (F32, BF16, F16, or I8 for q8: int8 values with an f32 scale per kv_q8_group(head_dim)
  // of them; by default the backend's preferred_kv_dtype()).
  KvCache(Backend& backend, const LlamaConfig& config, int64_t capacity_tokens,
          int64_t block_size = 16, std::optional<DType> dtype = std::nullopt);

  int add_sequence();
  void remove_sequence(int seq);
  int64_t length(int seq) const;
  // The context size: no sequence grows past it (the pool holds at least this many tokens).
  int64_t capacity_tokens() const { return capacity_tokens_; }
  DType dtype() const { return dtype_; }
  int64_t free_tokens() const { return int64_t(free_blocks_.size()) * block_size_; }

  // Makes room for `n_tokens` more positions in `seq`; throws when the cache is full.
  void reserve(int seq, int64_t n_tokens);
  // Marks `n_tokens` more positions of `seq` as filled (after the forward pass wrote them).
  void advance(int seq, int64_t n_tokens);
  // Forgets positions >= new_length, returning their blocks to the pool.
  void truncate(int seq, int64_t new_length);

  KvLayerView layer_view(int layer, int seq) const;
  // The same layer's blocks with other block tables: [max_blocks] i32, or [n, max_blocks] i32 with
  // one row per token (a decode step of n sequences in one attention call).
  KvLayerView layer_view(int layer, const Tensor& table) const;
  // The blocks `seq` owns, in position order, and the width of every block table.
  std::span<const int32_t> blocks(int seq) const { return sequence(seq).blocks; }
  int64_t max_blocks_per_sequence() const { return n_blocks_; }
  // Unique per cache object for the life of the process (graphs recorded over one cache's
  // pools must not be replayed over another's).
  uint64_t id() const { return id_; }

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    Tensor table;  // [max_blocks] i32 on the backend
    int64_t length = 0;
    bool active = false;
  };
  Sequence& sequence(int seq);
  const Sequence& sequence(int seq) const;
  void upload_table(Sequence& s);

  Backend& backend_;
  uint64_t id_;
  int64_t block_size_;
  int64_t capacity_tokens_;
  int64_t n_blocks_;
  DType dtype_;
  std::vector<Tensor> k_blocks_;  // per layer [n_blocks, block_size, n_kv_heads, head_dim] dtype_
  std::vector<Tensor> v_blocks_;
  std::vector<Tensor> k_scales_;  // per layer, q8 only: [n_blocks, block_size, n_kv_heads, groups]
  std::vector<Tensor> v_scales_;
  std::vector<int32_t> free_blocks_;
  std::vector<Sequence> sequences_;
};

}  // namespace llamaq
