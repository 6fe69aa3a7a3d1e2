// Streaming NF4 matrix-vector kernel for decode (1..kNf4StreamMaxTokens tokens) on the CUDA
// cores: out[t, r] = sum_k x[t, k] W[r, k], modelled on dense_gemv.cu. Decode reads every weight
// once per step, so the kernel is a weight stream: each lane loads 4 packed bytes (8 weights) per
// row and step with ld.global.nc.L1::no_allocate, so that a warp reads 128 contiguous bytes of a
// row and its x (32 bytes per lane, two float4 through the read-only cache) is coalesced too;
// kUnroll steps of kRows rows are in flight before any is used.
//
// Decoding: a byte (two 4-bit codes) becomes the float2 of its two code values through a
// 256-entry table in shared memory, one copy per lane (table[byte][lane], 64 KB), so the random
// lookups never conflict on a bank: per byte one bit-field extract, one address, one 64-bit
// shared load, then one FMA per weight and token. The 8 products of a lane's load stay unscaled
// and are multiplied by their block's scale once (8 weights always lie in one block: block sizes
// are >= 32 and the flattened index of a load is a multiple of 8); the scale is decoded in the
// kernel, double quantization included, exactly as nf4_decode.cuh does.
//
// Numerics: x, the code values and the scale are used in fp32, sums in fp32. Unlike the CPU
// reference (and bitsandbytes), the dequantized value code * scale is NOT rounded to the weight's
// original dtype: each weight differs from the reference's by at most half a bf16 ulp (2^-8
// relative; f16: 2^-11), independent per weight, so the output differs by ~1.6e-3 relative (RMS
// of the rounding error) for bf16 originals and ~2e-4 for f16. f32 originals match up to
// summation order.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/kernel_attributes.h"
#include "backend/cuda/nf4_decode.cuh"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kLaneCols = 8;               // weights (columns) per lane and load: 4 bytes
constexpr int kStepCols = 32 * kLaneCols;  // columns of one warp step: 256
constexpr int kTableEntries = 256 * 32;    // [byte][lane] float2
constexpr size_t kSharedBytes = size_t(kTableEntries) * sizeof(float2) + nf4::kNestedCodes * 4;

__device__ __forceinline__ uint32_t stream_load(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// The lane-private byte table and the nested absmax code map.
__device__ __forceinline__ void fill_tables(const Nf4Params& p, float2* table, float* nested_map) {
  __shared__ float codes[nf4::kCodes];
  nf4_load_tables<kThreads>(p, codes, nested_map);
  // Byte b holds the lower (even) column in its high nibble: that value goes to .x.
  // Two lanes' copies per 16-byte store (entries 2i and 2i + 1 belong to the same byte).
  for (int i = threadIdx.x; i < kTableEntries / 2; i += kThreads) {
    const int byte = i / 16;
    const float high = codes[byte >> 4], low = codes[byte & 15];
    reinterpret_cast<float4*>(table)[i] = make_float4(high, low, high, low);
  }
  __syncthreads();
}

// What the load phase fetches for a block scale: the f32 absmax, or the u8 code (double quant).
__device__ __forceinline__ float load_scale_raw(const Nf4Params& p, int64_t k) {
  const unsigned block = nf4_block_of(p, k);
  if (p.double_quant) return __uint_as_float(unsigned(__ldg(p.absmax_codes + block)));
  return __ldg(p.absmax + block);
}

// Turns the loaded raw value into the block scale (bit-exact with nf4_block_scale).
__device__ __forceinline__ float finish_scale(const Nf4Params& p, int64_t k, float raw,
                                              const float* nested_map) {
  if (!p.double_quant) return raw;
  const unsigned block = nf4_block_of(p, k);
  const float nested = __ldg(p.nested_absmax + (block >> p.nested_shift));
  return __fadd_rn(__fmul_rn(nested_map[__float_as_uint(raw)], nested), p.nested_offset);
}

// The 8 code values of a lane's 4 packed bytes, in column order.
__device__ __forceinline__ void decode8(uint32_t word, const float2* lane_table, float (&w)[8]) {
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    const float2 pair = lane_table[((word >> (8 * b)) & 0xffu) * 32];
    w[2 * b] = pair.x;
    w[2 * b + 1] = pair.y;
  }
}

// kTokens: n; kRows: rows per warp; kUnroll: steps whose loads are issued before any is used.
template <int kTokens, int kRows, int kUnroll>
__global__ void __launch_bounds__(kThreads, 2)
    nf4_gemv_stream_kernel(Nf4Params p,
                           const float* __restrict__ x,  // [kTokens, cols] f32
                           float* __restrict__ out) {    // [kTokens, rows] f32
  extern __shared__ float4 stream_shared[];              // 16-byte aligned for the table's stores
  float2* table = reinterpret_cast<float2*>(stream_shared);
  float* nested_map = reinterpret_cast<float*>(table + kTableEntries);
  fill_tables(p, table, nested_map);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row0 = (int64_t(blockIdx.x) * kWarps + warp) * kRows;
  if (row0 >= p.rows) return;
  const float2* lane_table = table + lane;
  int64_t row_start[kRows];  // flattened index of the row's column 0 (a multiple of 8)
  const uint32_t* row_words[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = min(row0 + r, p.rows - 1);  // a clamped duplicate is computed, not stored
    row_start[r] = row * p.cols;
    row_words[r] = reinterpret_cast<const uint32_t*>(p.packed + row_start[r] / 2);
  }
  float acc[kRows][kTokens] = {};
  const int cols = int(p.cols);  // < 2^31 (nf4_stream_gemv_supported)
  for (int base = 0; base < cols; base += kUnroll * kStepCols) {
    uint32_t words[kUnroll][kRows];
    float scale_raw[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = base + u * kStepCols + lane * kLaneCols;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const bool in = col < cols;
        words[u][r] = in ? stream_load(row_words[r] + unsigned(col) / kLaneCols) : 0u;
        scale_raw[u][r] = in ? load_scale_raw(p, row_start[r] + col) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = base + u * kStepCols + lane * kLaneCols;
      if (col >= cols) break;
      float w[kRows][8];
      float scale[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        decode8(words[u][r], lane_table, w[r]);
        scale[r] = finish_scale(p, row_start[r] + col, scale_raw[u][r], nested_map);
      }
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const float4* xt = reinterpret_cast<const float4*>(x + int64_t(t) * cols + col);
        const float4 a = __ldg(xt);
        const float4 b = __ldg(xt + 1);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float dot = w[r][0] * a.x + w[r][1] * a.y + w[r][2] * a.z + w[r][3] * a.w +
                            w[r][4] * b.x + w[r][5] * b.y + w[r][6] * b.z + w[r][7] * b.w;
          acc[r][t] = fmaf(dot, scale[r], acc[r][t]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const float sum = warp_sum(acc[r][t]);
      if (lane == 0 && row0 + r < p.rows) out[int64_t(t) * p.rows + row0 + r] = sum;
    }
  }
}

template <int kTokens, int kRows, int kUnroll>
void launch(const Nf4Params& p, const float* x, float* out, cudaStream_t stream) {
  constexpr auto kernel = nf4_gemv_stream_kernel<kTokens, kRows, kUnroll>;
  allow_dynamic_shared_memory<kernel>(int(kSharedBytes), "linear",
                                      "cudaFuncSetAttribute(nf4_gemv_stream_kernel)");
  const int64_t rows_per_block = int64_t(kWarps) * kRows;
  const unsigned blocks = unsigned((p.rows + rows_per_block - 1) / rows_per_block);
  kernel<<<blocks, kThreads, kSharedBytes, stream>>>(p, x, out);
}

// Big matrices (gate/up: 14336 rows) take 4 rows per warp for up to 4 tokens (x read once for 4
// rows); more tokens would spill registers there. Everything else takes 2 rows per warp with 8
// steps in flight, so that smaller matrices still spread over every multiprocessor with as many
// bytes in flight (rows x kUnroll x 128 bytes in all).
template <int kTokens>
void launch_for_rows(const Nf4Params& p, const float* x, float* out, int multiprocessors,
                     cudaStream_t stream) {
  if constexpr (kTokens <= 4) {
    if (p.rows >= int64_t(kWarps) * 4 * 2 * multiprocessors) {
      launch<kTokens, 4, 4>(p, x, out, stream);
      return;
    }
  }
  launch<kTokens, 2, 8>(p, x, out, stream);
}

}  // namespace

bool nf4_stream_gemv_supported(const Nf4Params& p) {
  return p.cols % kLaneCols == 0 && p.cols > 0 && p.block_size >= kLaneCols &&
         (!p.double_quant || p.nested_shift >= 0) &&
         reinterpret_cast<uintptr_t>(p.packed) % 4 == 0 && p.rows < (int64_t(1) << 31) &&
         p.cols < (int64_t(1) << 31) - kStepCols * 8;
}

void launch_nf4_stream_gemv(const Nf4Params& p, const float* x, float* out, int n,
                            int multiprocessors, cudaStream_t stream) {
  if (!nf4_stream_gemv_supported(p) || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    fail_op("linear", "the streaming NF4 GEMV does not support this shape or alignment");
  }
  switch (n) {
#define LLAMAQ_NF4_STREAM_CASE(N)                           \
  case N:                                                   \
    launch_for_rows<N>(p, x, out, multiprocessors, stream); \
    break;
    LLAMAQ_NF4_STREAM_CASE(1)
    LLAMAQ_NF4_STREAM_CASE(2)
    LLAMAQ_NF4_STREAM_CASE(3)
    LLAMAQ_NF4_STREAM_CASE(4)
    LLAMAQ_NF4_STREAM_CASE(5)
    LLAMAQ_NF4_STREAM_CASE(6)
    LLAMAQ_NF4_STREAM_CASE(7)
    LLAMAQ_NF4_STREAM_CASE(8)
#undef LLAMAQ_NF4_STREAM_CASE
    default:
      fail_op("linear", "the streaming NF4 GEMV supports 1 to 8 tokens");
  }
  check_launch("linear", "nf4_gemv_stream_kernel");
}

}  // namespace llamaq::cuda
