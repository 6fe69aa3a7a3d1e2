// The naive (materialized-scores) attention path; see attention_naive.cu.
#pragma once

#include "backend/cuda/attention_kernels.h"
#include "backend/cuda/cuda_context.h"

namespace llamaq::cuda {

// `capacity`: keys in the sequence's block table (block_table size * block_size). Scratch of
// 6 * n_heads * n_tokens * capacity bytes comes from the context's allocator.
void attention_naive(CudaContext& ctx, const AttentionParams& p, int capacity);

}  // namespace llamaq::cuda
