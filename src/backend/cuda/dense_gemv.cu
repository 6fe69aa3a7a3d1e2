// Dense matrix-vector products for few tokens (decode) with bf16/f16 weights: out[t, r] =
// sum_k x[t, k] w[r, k] with the f32 activations used as they are (the CPU reference's math: each
// weight widened to f32, f32 products and sums), so no conversion kernel runs before it.
// Decode reads every weight once per step, so the kernel is a weight stream: each lane issues
// 16-byte loads (8 weights) that bypass L1, kUnroll steps of kRowsPerWarp rows per batch issued
// before any is used; x is read through the read-only cache (all warps share it); warp-shuffle
// sums at the end. (Loading the next batch while the current one is used measured the same,
// 205.9 against 208.5 tokens/s on the H200, with 90 registers a thread instead of ~60.)
//
// One launch covers up to three matrices that share x (q, k and v: their row blocks follow one
// another), or gate and up as a pair: a warp then holds gate row r and up row r and writes
// silu(gate) * up, so the MLP needs no separate SwiGLU kernel. With `accumulate` the result is
// added into out (the residual add after o_proj and down_proj).
//
// Programmatic dependent launch (sm_90): the kernel lets its successor launch at once and issues
// its first weight loads before it waits for its predecessor, so a weight stream starts while the
// op before it finishes. Nothing it reads before the wait is written by another kernel of a step.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/kernel_attributes.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kUnroll = 4;  // steps of a batch, all issued before any is used
constexpr int kVector = 8;  // weights per 16-byte load
constexpr int kStep = 32 * kVector;
constexpr int kBatch = kUnroll * kStep;  // columns per batch
constexpr int kMaxGroup = 3;

struct GemvMatrix {
  const void* w;  // [rows, cols] bf16 or f16
  float* out;     // [n, rows] f32 (with SwiGLU: the gate matrix's holds silu(gate) * up)
  int rows;
  int first_block;  // the launch's first block of this matrix
};

struct GemvGroup {
  GemvMatrix m[kMaxGroup];
  int count;
  int cols;         // a multiple of 8
  const float* x;   // [n, cols] f32
  bool accumulate;  // out += result (a residual add) instead of out = result
};

template <typename T>
__device__ __forceinline__ void widen8(const uint4& v, float (&w)[8]) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i)
    w[i] = to_float(h[i]);
}

// a, b or c by index (kernel parameters indexed at run time would be copied to local memory).
template <typename V>
__device__ __forceinline__ V pick(int i, V a, V b, V c) {
  return i == 0 ? a : i == 1 ? b : c;
}
#define LLAMAQ_PICK(g, i, field) pick(i, (g).m[0].field, (g).m[1].field, (g).m[2].field)

// Loads batch `base` of the warp's rows (zeros past cols).
__device__ __forceinline__ void load_batch(const uint4* const (&rows)[kRowsPerWarp], int base,
                                           int cols, uint4 (&v)[kUnroll][kRowsPerWarp]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int col = base + u * kStep + lane * kVector;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      v[u][r] = col < cols ? load_streaming(rows[r] + col / kVector) : make_uint4(0, 0, 0, 0);
  }
}

// kSwiglu: a group of two (gate, up) of equal rows; warp slot 0 holds gate row r, slot 1 up row r.
template <typename T, int N, bool kSwiglu>
__global__ void __launch_bounds__(kThreads) dense_gemv_kernel(GemvGroup g) {
  allow_dependents_to_launch();
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int block = int(blockIdx.x);
  const int matrix = kSwiglu ? 0
                             : int(g.count > 1 && block >= g.m[1].first_block) +
                                   int(g.count > 2 && block >= g.m[2].first_block);
  const int rows_of = LLAMAQ_PICK(g, matrix, rows);
  const int warp_rows = kSwiglu ? 1 : kRowsPerWarp;  // distinct output rows per warp
  const int row0 = ((block - LLAMAQ_PICK(g, matrix, first_block)) * kWarps + warp) * warp_rows;
  if (row0 >= rows_of) return;  // the last block of a matrix may have idle warps
  const uint4* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int m = kSwiglu ? r : matrix;
    const int row = kSwiglu ? row0 : min(row0 + r, rows_of - 1);  // a clamped duplicate: not stored
    rows[r] = reinterpret_cast<const uint4*>(static_cast<const T*>(LLAMAQ_PICK(g, m, w)) +
                                             int64_t(row) * g.cols);
  }
  uint4 v[kUnroll][kRowsPerWarp];
  load_batch(rows, 0, g.cols, v);
  wait_for_predecessors();  // x (and out, when accumulating) come from the ops before
  float acc[kRowsPerWarp][N] = {};
  for (int base = 0; base < g.cols; base += kBatch) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = base + u * kStep + lane * kVector;
      if (col >= g.cols) break;
#pragma unroll
      for (int t = 0; t < N; ++t) {
        const float4* xt = reinterpret_cast<const float4*>(g.x + int64_t(t) * g.cols + col);
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
    if (base + kBatch < g.cols) load_batch(rows, base + kBatch, g.cols, v);
  }
#pragma unroll
  for (int t = 0; t < N; ++t) {
    float sums[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      sums[r] = warp_sum(acc[r][t]);
    if (lane != 0) continue;
    float* out = LLAMAQ_PICK(g, matrix, out) + int64_t(t) * rows_of;
    if constexpr (kSwiglu) {  // the CPU reference's silu(g) * u: g / (1 + exp(-g)) * u
      const float gate = sums[0];
      out[row0] = __fmul_rn(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))), sums[1]);
    } else {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (row0 + r >= rows_of) break;
        float* o = out + row0 + r;
        *o = g.accumulate ? __fadd_rn(*o, sums[r]) : sums[r];  // as add_inplace: x + projection
      }
    }
  }
}
#undef LLAMAQ_PICK

template <typename T, bool kSwiglu>
void launch_for_type(const GemvGroup& g, int n, int blocks, cudaStream_t stream) {
  const PdlLaunchConfig config(dim3(unsigned(blocks)), dim3(unsigned(kThreads)), 0, stream,
                               "linear");
  cudaError_t status = cudaSuccess;
  switch (n) {
#define LLAMAQ_GEMV_CASE(N)                                                         \
  case N:                                                                           \
    status = cudaLaunchKernelEx(config.get(), dense_gemv_kernel<T, N, kSwiglu>, g); \
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
  check_cuda(status, "linear", "cudaLaunchKernelEx(dense_gemv_kernel)");
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

bool dense_gemv_supported(const Tensor& x, const Tensor& weight) {
  const bool half = weight.dtype() == DType::BF16 || weight.dtype() == DType::F16;
  return half && x.dim(0) >= 1 && x.dim(0) <= kDenseGemvMaxTokens && weight.dim(1) % 8 == 0 &&
         weight.dim(1) > 0 && weight.dim(0) <= 2147483647 && weight.dim(1) <= 2147483647 &&
         aligned16(weight.data()) && aligned16(x.data());
}

bool dense_gemv_group_supported(const Tensor& x, std::span<const Tensor* const> ws, bool swiglu) {
  if (ws.empty() || ws.size() > size_t(kMaxGroup) || (swiglu && ws.size() != 2)) return false;
  int64_t blocks = 0;
  for (const Tensor* w : ws) {
    if (!dense_gemv_supported(x, *w) || w->dtype() != ws[0]->dtype() ||
        w->dim(1) != ws[0]->dim(1)) {
      return false;
    }
    blocks += (w->dim(0) + kRowsPerBlock - 1) / kRowsPerBlock;
  }
  if (swiglu && ws[0]->dim(0) != ws[1]->dim(0)) return false;
  return blocks <= 2147483647;
}

void dense_gemv_group(CudaContext& ctx, const Tensor& x, std::span<const Tensor* const> ws,
                      std::span<Tensor* const> outs, bool swiglu, bool accumulate) {
  const char* op = "linear";
  require(dense_gemv_group_supported(x, ws, swiglu), op,
          "the dense GEMV does not support this group (bf16/f16 weights of one type and width, "
          "cols a multiple of 8, 1 to 8 tokens, 16-byte aligned data)");
  require(outs.size() == (swiglu ? 1 : ws.size()), op, "dense GEMV group: wrong output count");
  const int64_t n = x.dim(0);
  GemvGroup g{};
  g.count = swiglu ? 2 : int(ws.size());
  g.cols = int(ws[0]->dim(1));
  g.x = x.data_as<const float>();
  g.accumulate = accumulate;
  const int rows_per_block = swiglu ? kWarps : kRowsPerBlock;
  int blocks = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    Tensor& out = *outs[swiglu ? 0 : i];
    require_tensor(out, DType::F32, 2, op, "out");
    require_shape(out, {n, ws[i]->dim(0)}, op, "out");
    g.m[i] = GemvMatrix{ws[i]->data(), out.data_as<float>(), int(ws[i]->dim(0)), blocks};
    if (!swiglu || i == 0) blocks += int((ws[i]->dim(0) + rows_per_block - 1) / rows_per_block);
  }
  for (int i = int(ws.size()); i < kMaxGroup; ++i)
    g.m[i] = g.m[0];  // never picked: keeps the selects free of null pointers
  const bool bf16 = ws[0]->dtype() == DType::BF16;
  if (swiglu) {
    bf16 ? launch_for_type<__nv_bfloat16, true>(g, int(n), blocks, ctx.stream())
         : launch_for_type<__half, true>(g, int(n), blocks, ctx.stream());
  } else {
    bf16 ? launch_for_type<__nv_bfloat16, false>(g, int(n), blocks, ctx.stream())
         : launch_for_type<__half, false>(g, int(n), blocks, ctx.stream());
  }
}

void dense_gemv(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out,
                bool accumulate) {
  const Tensor* ws[1] = {&weight};
  Tensor* outs[1] = {&out};
  dense_gemv_group(ctx, x, ws, outs, /*swiglu=*/false, accumulate);
}

}  // namespace llamaq::cuda
