// Dense matrix-vector products for few tokens (decode) with bf16/f16 weights: out[t, r] =
// sum_k x[t, k] w[r, k] with the f32 activations used as they are (the CPU reference's math: each
// weight widened to f32, f32 products and sums), so no conversion kernel runs before it.
// Decode reads every weight once per step, so the kernel is a weight stream: each lane issues
// 16-byte loads (8 weights) that bypass L1, kUnroll steps of kRowsPerWarp rows in flight at once,
// x read through the read-only cache (all warps share it), warp-shuffle sums at the end.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 2;
constexpr int kUnroll = 4;  // steps whose loads are issued before any is used
constexpr int kVector = 8;  // weights per 16-byte load
constexpr int kStep = 32 * kVector;

struct GemvParams {
  const void* w;   // [rows, cols] bf16 or f16
  const float* x;  // [n, cols] f32
  float* out;      // [n, rows] f32
  int rows;
  int cols;         // a multiple of 8
  bool accumulate;  // out += result (a residual add) instead of out = result
};

template <typename T>
__device__ __forceinline__ void widen8(const uint4& v, float (&w)[8]) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i)
    w[i] = to_float(h[i]);
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) dense_gemv_kernel(GemvParams p) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kWarps + warp) * kRowsPerWarp;
  if (row0 >= p.rows) return;
  const uint4* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = min(row0 + r, p.rows - 1);  // a clamped duplicate row is computed, not stored
    rows[r] = reinterpret_cast<const uint4*>(static_cast<const T*>(p.w) + int64_t(row) * p.cols);
  }
  float acc[kRowsPerWarp][N] = {};
  for (int base = 0; base < p.cols; base += kUnroll * kStep) {
    uint4 v[kUnroll][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = base + u * kStep + lane * kVector;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        v[u][r] = col < p.cols ? load_streaming(rows[r] + col / kVector) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = base + u * kStep + lane * kVector;
      if (col >= p.cols) break;
#pragma unroll
      for (int t = 0; t < N; ++t) {
        const float4* xt = reinterpret_cast<const float4*>(p.x + int64_t(t) * p.cols + col);
        const float4 a = __ldg(xt);
        const float4 b = __ldg(xt + 1);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          float w[8];
          widen8<T>(v[u][r], w);
          acc[r][t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y +
                       w[6] * b.z + w[7] * b.w;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const float sum = warp_sum(acc[r][t]);
      if (lane == 0 && row0 + r < p.rows) {
        float* o = p.out + int64_t(t) * p.rows + row0 + r;
        *o = p.accumulate ? __fadd_rn(*o, sum) : sum;  // as add_inplace: x + projection
      }
    }
  }
}

template <typename T>
void launch_for_type(const GemvParams& p, int n, cudaStream_t stream) {
  const unsigned blocks = unsigned((p.rows + kWarps * kRowsPerWarp - 1) / (kWarps * kRowsPerWarp));
  switch (n) {
#define LLAMAQ_GEMV_CASE(N)                                      \
  case N:                                                        \
    dense_gemv_kernel<T, N><<<blocks, kThreads, 0, stream>>>(p); \
    break;
    LLAMAQ_GEMV_CASE(1)
    LLAMAQ_GEMV_CASE(2)
    LLAMAQ_GEMV_CASE(3)
    LLAMAQ_GEMV_CASE(4)
    LLAMAQ_GEMV_CASE(5)
    LLAMAQ_GEMV_CASE(6)
    LLAMAQ_GEMV_CASE(7)
    LLAMAQ_GEMV_CASE(8)
#undef LLAMAQ_GEMV_CASE
    default:
      fail_op("linear", "dense GEMV supports 1 to 8 tokens");
  }
  check_launch("linear", "dense_gemv_kernel");
}

}  // namespace

bool dense_gemv_supported(const Tensor& x, const Tensor& weight) {
  const bool half = weight.dtype() == DType::BF16 || weight.dtype() == DType::F16;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return half && x.dim(0) >= 1 && x.dim(0) <= kDenseGemvMaxTokens && weight.dim(1) % 8 == 0 &&
         weight.dim(1) > 0 && weight.dim(0) <= 2147483647 && weight.dim(1) <= 2147483647 &&
         aligned(weight.data()) && aligned(x.data());
}

void dense_gemv(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out,
                bool accumulate) {
  GemvParams p{};
  p.w = weight.data();
  p.x = x.data_as<const float>();
  p.out = out.data_as<float>();
  p.accumulate = accumulate;
  p.rows = int(weight.dim(0));
  p.cols = int(weight.dim(1));
  if (weight.dtype() == DType::BF16) {
    launch_for_type<__nv_bfloat16>(p, int(x.dim(0)), ctx.stream());
  } else {
    launch_for_type<__half>(p, int(x.dim(0)), ctx.stream());
  }
}

}  // namespace llamaq::cuda
