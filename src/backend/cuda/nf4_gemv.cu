// Fused NF4 dequantize-and-multiply for few tokens (decode): each weight byte is read once, with
// 16-byte loads, and never written back dequantized. A warp owns kRowsPerWarp weight rows; per
// step each lane takes 32 consecutive elements (16 bytes) of every row, decodes their block scale
// in the kernel (double quantization included), rounds each value as bitsandbytes does and
// multiplies it with up to 8 tokens of x (read through L1, shared by the warp's rows). The next
// step's bytes and scales are loaded before the current step is computed, to keep loads in flight.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/nf4_decode.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kChunk = 32;          // elements per lane per step (16 bytes)
constexpr int kStep = 32 * kChunk;  // columns a warp covers per step

// One step of a lane: 16 packed bytes and the block scale of each of the warp's rows.
struct Nf4Chunk {
  uint4 bytes[kRowsPerWarp];
  float scale[kRowsPerWarp];
};

__device__ __forceinline__ Nf4Chunk load_chunk(const Nf4Params& p, int64_t row0, int64_t col,
                                               const float* nested_map) {
  Nf4Chunk c;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t k = (row0 + r) * p.cols + col;  // flattened element index, a multiple of 32
    const bool valid = row0 + r < p.rows && col < p.cols;
    c.bytes[r] =
        valid ? __ldg(reinterpret_cast<const uint4*>(p.packed + k / 2)) : make_uint4(0, 0, 0, 0);
    c.scale[r] = valid ? nf4_block_scale(p, nf4_block_of(p, k), nested_map) : 0.0f;
  }
  return c;
}

__device__ __forceinline__ float dot8(const float (&w)[8], float4 a, float4 b) {
  return w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
         w[7] * b.w;
}

// The 8 values of one 32-bit word of a chunk: byte j holds elements 2j (high nibble) and 2j + 1.
template <Nf4Rounding R>
__device__ __forceinline__ void decode_word(unsigned word, float scale, const float* code_table,
                                            float (&w)[8]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 pair =
        nf4_value_pair<R>(code_table, (word >> (8 * j + 4)) & 0xF, (word >> (8 * j)) & 0xF, scale);
    w[2 * j] = pair.x;
    w[2 * j + 1] = pair.y;
  }
}

__device__ __forceinline__ unsigned word_of(const uint4& v, int word) {
  return word == 0 ? v.x : word == 1 ? v.y : word == 2 ? v.z : v.w;
}

// kMaxTokens (1 or kNf4GemvMaxTokens) sizes the per-token registers: decode (n = 1) gets its
// own instantiation so that it does not pay for eight tokens' accumulators.
template <Nf4Rounding R, int kMaxTokens>
__global__ void __launch_bounds__(kThreads)
    nf4_gemv_kernel(Nf4Params p, const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float code_table[nf4::kCodes];
  __shared__ float nested_map[nf4::kNestedCodes];
  if (threadIdx.x < nf4::kCodes) code_table[threadIdx.x] = p.code_table[threadIdx.x];
  if (p.double_quant) {
    for (int i = threadIdx.x; i < nf4::kNestedCodes; i += kThreads)
      nested_map[i] = p.nested_map[i];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t row0 = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x / 32) * kRowsPerWarp;
  float acc[kRowsPerWarp][kMaxTokens] = {};
  Nf4Chunk next = load_chunk(p, row0, int64_t(lane) * kChunk, nested_map);
  for (int64_t col = int64_t(lane) * kChunk; col < p.cols; col += kStep) {
    const Nf4Chunk chunk = next;
    next = load_chunk(p, row0, col + kStep, nested_map);  // in flight while this step computes
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      float4 xa[kMaxTokens], xb[kMaxTokens];
#pragma unroll
      for (int t = 0; t < kMaxTokens; ++t) {
        if (t >= n) break;
        const float4* xs = reinterpret_cast<const float4*>(x + t * p.cols + col + 8 * word);
        xa[t] = __ldg(xs);
        xb[t] = __ldg(xs + 1);
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        float w[8];
        decode_word<R>(word_of(chunk.bytes[r], word), chunk.scale[r], code_table, w);
#pragma unroll
        for (int t = 0; t < kMaxTokens; ++t) {
          if (t >= n) break;
          acc[r][t] += dot8(w, xa[t], xb[t]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) {
      if (t >= n) break;
      const float sum = warp_sum(acc[r][t]);
      if (lane == 0 && row0 + r < p.rows) out[t * p.rows + row0 + r] = sum;
    }
  }
}

template <Nf4Rounding R>
void launch_for_rounding(const Nf4Params& p, const float* x, float* out, int n,
                         cudaStream_t stream) {
  const unsigned blocks = unsigned((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  if (n == 1) {
    nf4_gemv_kernel<R, 1><<<blocks, kThreads, 0, stream>>>(p, x, out, n);
  } else {
    nf4_gemv_kernel<R, kNf4GemvMaxTokens><<<blocks, kThreads, 0, stream>>>(p, x, out, n);
  }
}

}  // namespace

void launch_nf4_gemv(const Nf4Params& p, const float* x, float* out, int n, cudaStream_t stream) {
  if (n < 1 || n > kNf4GemvMaxTokens || p.cols % kChunk != 0 || p.block_size % kChunk != 0) {
    fail_op("linear", "the fused NF4 GEMV does not support this shape");
  }
  switch (p.rounding) {
    case Nf4Rounding::Bf16:
      launch_for_rounding<Nf4Rounding::Bf16>(p, x, out, n, stream);
      break;
    case Nf4Rounding::F16:
      launch_for_rounding<Nf4Rounding::F16>(p, x, out, n, stream);
      break;
    default:
      launch_for_rounding<Nf4Rounding::F32>(p, x, out, n, stream);
      break;
  }
  check_launch("linear", "nf4_gemv_kernel");
}

}  // namespace llamaq::cuda
