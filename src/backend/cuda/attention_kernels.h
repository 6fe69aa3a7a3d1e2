// The attention kernel family: the parameters every attention kernel reads and the launchers of
// the paths (attention.cu picks one). All compute causal GQA attention over the paged KV cache
// with an online softmax in fp32, query i seeing the keys at positions 0..positions[i]; the naive
// path (attention_naive.cu) materializes the scores instead.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llamaq::cuda {

// The element type of the paged KV cache.
enum class KvElement : int32_t { F32, Bf16 };

struct AttentionParams {
  const float* q;              // [n_tokens, n_heads, head_dim] f32
  const int32_t* positions;    // [n_tokens] i32
  const void* k_blocks;        // [n_blocks, block_size, n_kv_heads, head_dim] f32 or bf16
  const void* v_blocks;        // [n_blocks, block_size, n_kv_heads, head_dim] f32 or bf16
  const int32_t* block_table;  // [max_blocks] i32, or [n_tokens, table_stride] i32
  int64_t table_stride;        // 0: one table for every token; else row t is token t's table
  float* out;                  // [n_tokens, n_heads * head_dim] f32
  int n_tokens;
  int n_heads;
  int n_kv_heads;
  int group;       // query heads per kv head
  int block_size;  // positions per KV block
  int head_dim;
  float scale;  // 1 / sqrt(head_dim)
  KvElement kv_element;
};

// Head dims with compiled kernels.
inline bool attention_head_dim_supported(int head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

// FlashAttention-2 style in fp32 on CUDA cores: a block per (32 queries, head), K/V tiles of 32
// keys in shared memory. f32 or bf16 cache.
void launch_attention_flash(const AttentionParams& p, cudaStream_t stream);

// FlashAttention-2 forward on the tensor cores (bf16 mma.sync, fp32 accumulation and softmax): a
// block per (64 queries, head), K/V tiles of 64 keys double-buffered in shared memory. Head dims
// 64 and 128; f32 or bf16 cache.
bool attention_flash_mma_supported(int head_dim);
void launch_attention_flash_mma(const AttentionParams& p, cudaStream_t stream);

// Split-KV ("flash-decoding"): a block per (query, head, split of the keys) writes a partial
// softmax state to the workspace; the last block of each (query, head) to finish merges the
// splits (counted on `arrivals`), or without counters a second kernel does. f32 or bf16 cache.
constexpr int kSplitKvMaxSplits = 64;
struct SplitKvWorkspace {
  float* partial_out;    // [n_tokens, n_heads, n_splits, head_dim] f32, unnormalized
  float* partial_stats;  // [n_tokens, n_heads, n_splits, 2] f32: running max, sum of exps
  int n_splits;          // 1..kSplitKvMaxSplits
  unsigned* arrivals;    // [n_tokens * n_heads] zeroed counters (left zeroed), or null
};
void launch_attention_split_kv(const AttentionParams& p, const SplitKvWorkspace& ws,
                               cudaStream_t stream);

}  // namespace llamaq::cuda
