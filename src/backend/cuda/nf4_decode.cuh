// Device-side NF4 decoding shared by the GEMV and the dequantizer, bit-exact with
// nf4::dequantize_rows: scale = absmax[b], or nested_map[q[b]] * nested_absmax[b / 256] + offset
// rounded after the product and after the sum (__fmul_rn/__fadd_rn: no FMA contraction), then
// value = round_to_original(code_table[code] * scale).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/nf4_params.h"

namespace llamaq::cuda {

// `nested_map` may point to a shared-memory copy of p.nested_map.
__device__ __forceinline__ float nf4_block_scale(const Nf4Params& p, int64_t block,
                                                 const float* nested_map) {
  if (!p.double_quant) return p.absmax[block];
  const float product =
      __fmul_rn(nested_map[p.absmax_codes[block]], p.nested_absmax[block / p.nested_block_size]);
  return __fadd_rn(product, p.nested_offset);
}

__device__ __forceinline__ float nf4_round(float value, Nf4Rounding rounding) {
  switch (rounding) {
    case Nf4Rounding::Bf16:
      return __bfloat162float(__float2bfloat16_rn(value));
    case Nf4Rounding::F16:
      return __half2float(__float2half_rn(value));
    default:
      return value;
  }
}

// `code_table` may point to a shared-memory copy of p.code_table.
__device__ __forceinline__ float nf4_value(const float* code_table, unsigned code, float scale,
                                           Nf4Rounding rounding) {
  return nf4_round(__fmul_rn(code_table[code], scale), rounding);
}

}  // namespace llamaq::cuda
