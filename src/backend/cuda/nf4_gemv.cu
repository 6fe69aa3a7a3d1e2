// Fused NF4 dequantize-and-multiply for few tokens (decode): each weight byte is read once, with
// 16-byte loads, and never written back dequantized. A warp owns kRowsPerWarp weight rows; per
// step each lane takes 32 consecutive elements (16 bytes) of every row, decodes their block scale
// in the kernel (double quantization included), rounds each value as bitsandbytes does and
// multiplies it with up to 8 tokens of x (read through L1, shared by the warp's rows).
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/nf4_decode.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kChunk = 32;  // elements per lane per step (16 bytes)

__device__ __forceinline__ float dot8(const float (&w)[8], float4 a, float4 b) {
  return w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y +
         w[6] * b.z + w[7] * b.w;
}

// The 8 values of 32-bit word `word` of a 16-byte chunk: byte j holds elements 2j (high nibble)
// and 2j + 1 (low nibble).
__device__ __forceinline__ void decode_word(unsigned word, float scale, const float* code_table,
                                            Nf4Rounding rounding, float (&w)[8]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    w[2 * j] = nf4_value(code_table, (word >> (8 * j + 4)) & 0xF, scale, rounding);
    w[2 * j + 1] = nf4_value(code_table, (word >> (8 * j)) & 0xF, scale, rounding);
  }
}

__global__ void __launch_bounds__(kThreads)
    nf4_gemv_kernel(Nf4Params p, const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float code_table[nf4::kCodes];
  __shared__ float nested_map[nf4::kNestedCodes];
  if (threadIdx.x < nf4::kCodes) code_table[threadIdx.x] = p.code_table[threadIdx.x];
  if (p.double_quant) {
    for (int i = threadIdx.x; i < nf4::kNestedCodes; i += kThreads) nested_map[i] = p.nested_map[i];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t row0 = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x / 32) * kRowsPerWarp;
  float acc[kRowsPerWarp][kNf4GemvMaxTokens] = {};
  for (int64_t col = int64_t(lane) * kChunk; col < p.cols; col += 32 * kChunk) {
    uint4 bytes[kRowsPerWarp];
    float scale[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t k = (row0 + r) * p.cols + col;  // flattened element index, a multiple of 32
      const bool valid = row0 + r < p.rows;
      bytes[r] = valid ? *reinterpret_cast<const uint4*>(p.packed + k / 2) : make_uint4(0, 0, 0, 0);
      scale[r] = valid ? nf4_block_scale(p, k / p.block_size, nested_map) : 0.0f;
    }
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      float w[kRowsPerWarp][8];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const unsigned bits = word == 0 ? bytes[r].x : word == 1 ? bytes[r].y
                              : word == 2 ? bytes[r].z : bytes[r].w;
        decode_word(bits, scale[r], code_table, p.rounding, w[r]);
      }
#pragma unroll
      for (int t = 0; t < kNf4GemvMaxTokens; ++t) {
        if (t >= n) break;
        const float4* xs = reinterpret_cast<const float4*>(x + t * p.cols + col + 8 * word);
        const float4 a = __ldg(xs);
        const float4 b = __ldg(xs + 1);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) acc[r][t] += dot8(w[r], a, b);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int t = 0; t < kNf4GemvMaxTokens; ++t) {
      if (t >= n) break;
      const float sum = warp_sum(acc[r][t]);
      if (lane == 0 && row0 + r < p.rows) out[t * p.rows + row0 + r] = sum;
    }
  }
}

}  // namespace

void launch_nf4_gemv(const Nf4Params& p, const float* x, float* out, int n, cudaStream_t stream) {
  if (n < 1 || n > kNf4GemvMaxTokens || p.cols % kChunk != 0 || p.block_size % kChunk != 0) {
    fail_op("linear", "the fused NF4 GEMV does not support this shape");
  }
  const unsigned blocks = unsigned((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  nf4_gemv_kernel<<<blocks, kThreads, 0, stream>>>(p, x, out, n);
  check_launch("linear", "nf4_gemv_kernel");
}

}  // namespace llamaq::cuda
