// Fast CPU attention: flash-attention style tiles over the paged KV cache (one cache block of
// keys and values at a time, an online fp32 softmax), never a score vector of the whole sequence.
// Reads f32, bf16 or f16 caches (f16 widened by `widen_f16`, the kernel table's widen_scales);
// the query heads that share a KV head share each widened tile.
#pragma once

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/thread_pool.h"

namespace llamaq::cpu {

void attention_tiled(ThreadPool& pool, const Tensor& q,  // [n, n_heads, head_dim] f32
                     const Tensor& positions,            // [n] i32
                     const KvLayerView& kv,
                     Tensor& out,  // [n, n_heads * head_dim] f32
                     WidenScalesKernel widen_f16);

}  // namespace llamaq::cpu
