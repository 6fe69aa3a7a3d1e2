// Device-side NF4 decoding shared by the GEMV and the dequantizer, bit-exact with
// nf4::dequantize_rows: scale = absmax[b], or nested_map[q[b]] * nested_absmax[b / 256] + offset
// rounded after the product and after the sum (__fmul_rn/__fadd_rn: no FMA contraction), then
// value = round_to_original(code_table[code] * scale). The rounding is a template parameter so
// that the per-element code has no branches.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/nf4_params.h"

namespace llamaq::cuda {

// Copies the code table and (double quantization) the nested absmax code map into shared
// memory with the block's kThreads threads, then synchronizes the block.
template <int kThreads>
__device__ __forceinline__ void nf4_load_tables(const Nf4Params& p, float* code_table,
                                                float* nested_map) {
  if (threadIdx.x < nf4::kCodes) code_table[threadIdx.x] = p.code_table[threadIdx.x];
  if (p.double_quant) {
    for (int i = threadIdx.x; i < nf4::kNestedCodes; i += kThreads)
      nested_map[i] = p.nested_map[i];
  }
  __syncthreads();
}

// Block of flattened element k.
__device__ __forceinline__ unsigned nf4_block_of(const Nf4Params& p, int64_t k) {
  return unsigned(k >> p.block_shift);
}

// `nested_map` may point to a shared-memory copy of p.nested_map.
__device__ __forceinline__ float nf4_block_scale(const Nf4Params& p, unsigned block,
                                                 const float* nested_map) {
  if (!p.double_quant) return p.absmax[block];
  const float product =
      __fmul_rn(nested_map[p.absmax_codes[block]], p.nested_absmax[block / p.nested_block_size]);
  return __fadd_rn(product, p.nested_offset);
}

template <Nf4Rounding R>
__device__ __forceinline__ float nf4_round(float value) {
  if constexpr (R == Nf4Rounding::Bf16) {
    return __bfloat162float(__float2bfloat16_rn(value));
  } else if constexpr (R == Nf4Rounding::F16) {
    return __half2float(__float2half_rn(value));
  } else {
    return value;
  }
}

// `code_table` may point to a shared-memory copy of p.code_table.
template <Nf4Rounding R>
__device__ __forceinline__ float nf4_value(const float* code_table, unsigned code, float scale) {
  return nf4_round<R>(__fmul_rn(code_table[code], scale));
}

// Two values at once: the 16-bit roundings pack two floats per conversion instruction
// (round-to-nearest-even each, so the same values as nf4_value).
template <Nf4Rounding R>
__device__ __forceinline__ float2 nf4_value_pair(const float* code_table, unsigned code_a,
                                                 unsigned code_b, float scale) {
  const float a = __fmul_rn(code_table[code_a], scale);
  const float b = __fmul_rn(code_table[code_b], scale);
  if constexpr (R == Nf4Rounding::Bf16) {
    return __bfloat1622float2(__floats2bfloat162_rn(a, b));
  } else if constexpr (R == Nf4Rounding::F16) {
    return __half22float2(__floats2half2_rn(a, b));
  } else {
    return make_float2(a, b);
  }
}

}  // namespace llamaq::cuda
