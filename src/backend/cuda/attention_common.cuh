// Device helpers shared by the attention kernels: addressing a key/value row in the paged cache,
// reading cache elements (f32 or bf16) as f32, and the online-softmax rescaling guard.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/attention_kernels.h"

namespace llamaq::cuda {

// Offset (in floats) of the key or value vector of (position, kv head) in the block pool.
__device__ __forceinline__ int64_t kv_offset(const AttentionParams& p, int position, int kv_head) {
  const int64_t block = p.block_table[position / p.block_size];
  const int64_t slot = block * p.block_size + position % p.block_size;
  return (slot * p.n_kv_heads + kv_head) * p.head_dim;
}

// Four consecutive cache elements widened to f32 (16-byte aligned for f32, 8-byte for bf16).
__device__ __forceinline__ float4 load4(const float* at) {
  return *reinterpret_cast<const float4*>(at);
}

__device__ __forceinline__ float4 load4(const __nv_bfloat16* at) {
  const uint2 bits = *reinterpret_cast<const uint2*>(at);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// exp(a - b) where a may be -inf (no key seen yet): 0, never NaN (b is finite when used).
__device__ __forceinline__ float exp_diff(float a, float b) {
  return a == -INFINITY ? 0.0f : expf(a - b);
}

}  // namespace llamaq::cuda
