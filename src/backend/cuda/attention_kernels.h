// The attention kernel family: the parameters every attention kernel reads and the launchers of
// the two paths (attention.cu picks one). Both compute causal GQA attention over the paged KV
// cache in fp32 with an online softmax, query i seeing the keys at positions 0..positions[i].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llamaq::cuda {

struct AttentionParams {
  const float* q;              // [n_tokens, n_heads, head_dim] f32
  const int32_t* positions;    // [n_tokens] i32
  const float* k_blocks;       // [n_blocks, block_size, n_kv_heads, head_dim] f32
  const float* v_blocks;       // [n_blocks, block_size, n_kv_heads, head_dim] f32
  const int32_t* block_table;  // [max_blocks] i32
  float* out;                  // [n_tokens, n_heads * head_dim] f32
  int n_tokens;
  int n_heads;
  int n_kv_heads;
  int group;       // query heads per kv head
  int block_size;  // positions per KV block
  int head_dim;
  float scale;  // 1 / sqrt(head_dim)
};

// Head dims with compiled kernels.
inline bool attention_head_dim_supported(int head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

// FlashAttention-2 style: a block per (32 queries, head), K/V tiles of 32 keys in shared memory.
void launch_attention_flash(const AttentionParams& p, cudaStream_t stream);

// Split-KV ("flash-decoding"): a block per (query, head, split of the keys) writes a partial
// softmax state to the workspace; a second kernel merges the splits.
struct SplitKvWorkspace {
  float* partial_out;    // [n_tokens, n_heads, n_splits, head_dim] f32, unnormalized
  float* partial_stats;  // [n_tokens, n_heads, n_splits, 2] f32: running max, sum of exps
  int n_splits;
};
void launch_attention_split_kv(const AttentionParams& p, const SplitKvWorkspace& ws,
                               cudaStream_t stream);

}  // namespace llamaq::cuda
