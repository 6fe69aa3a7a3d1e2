// RMSNorm as the CPU reference computes it: the sum of squares of a row accumulated in double,
// inv_rms = float(1 / sqrt(sum / d + eps)), then out = weight * (x * inv_rms) in fp32. One block
// per row; x may alias out (each element is read before the same thread writes it).
//
// Rows of up to kMaxCachedVecs * 4 * kThreads elements whose length is a multiple of 4 (every
// Llama width) take the cached kernel: each thread loads its float4s once, all loads in flight
// together, and keeps them in registers for the second pass. The generic kernel walks the row
// twice with dependent scalar loads; for one decode row of 4096 it measured 10.4 us on the H200
// (profiler, 2026-11-29), most of it L2 round trips.
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct RmsnormParams {
  const float* x;      // [n, d] f32
  const void* weight;  // [d] bf16 | f16 | f32
  float* out;          // [n, d] f32
  int64_t d;
  float eps;
};

// The sum of `value` over the block, in every thread.
__device__ double block_sum(double value) {
  __shared__ double partial[kThreads / 32];
  value = warp_sum(value);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) partial[warp] = value;
  __syncthreads();
  double total = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w)
    total += partial[w];
  return total;
}

constexpr int kMaxCachedVecs = 4;  // float4s per thread: rows up to 4096 elements at 256 threads

__device__ __forceinline__ float4 load_weight4(const float* w, int64_t i) {
  return *reinterpret_cast<const float4*>(w + i);
}
__device__ __forceinline__ float4 load_weight4(const __nv_bfloat16* w, int64_t i) {
  const uint2 raw = *reinterpret_cast<const uint2*>(w + i);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load_weight4(const __half* w, int64_t i) {
  const uint2 raw = *reinterpret_cast<const uint2*>(w + i);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// d % 4 == 0, d <= kMaxCachedVecs * 4 * kThreads, 16-byte aligned rows, 8-byte aligned weight.
template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_cached_kernel(RmsnormParams p) {
  allow_dependents_to_launch();
  const float4* row = reinterpret_cast<const float4*>(p.x + int64_t(blockIdx.x) * p.d);
  float4* row_out = reinterpret_cast<float4*>(p.out + int64_t(blockIdx.x) * p.d);
  const int vecs = int(p.d / 4);
  float4 v[kMaxCachedVecs];
#pragma unroll
  for (int j = 0; j < kMaxCachedVecs; ++j) {
    const int i = threadIdx.x + j * kThreads;
    v[j] = i < vecs ? row[i] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  double sum_squares = 0;
#pragma unroll
  for (int j = 0; j < kMaxCachedVecs; ++j) {
    sum_squares += double(v[j].x) * v[j].x + double(v[j].y) * v[j].y;
    sum_squares += double(v[j].z) * v[j].z + double(v[j].w) * v[j].w;
  }
  sum_squares = block_sum(sum_squares);
  const float inv_rms = float(1.0 / sqrt(sum_squares / double(p.d) + double(p.eps)));
  const T* weight = static_cast<const T*>(p.weight);
#pragma unroll
  for (int j = 0; j < kMaxCachedVecs; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i >= vecs) break;
    const float4 w = load_weight4(weight, int64_t(i) * 4);
    row_out[i] = make_float4(
        __fmul_rn(w.x, __fmul_rn(v[j].x, inv_rms)), __fmul_rn(w.y, __fmul_rn(v[j].y, inv_rms)),
        __fmul_rn(w.z, __fmul_rn(v[j].z, inv_rms)), __fmul_rn(w.w, __fmul_rn(v[j].w, inv_rms)));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(RmsnormParams p) {
  allow_dependents_to_launch();
  const float* row = p.x + int64_t(blockIdx.x) * p.d;
  float* row_out = p.out + int64_t(blockIdx.x) * p.d;
  double sum_squares = 0;
  for (int64_t i = threadIdx.x; i < p.d; i += kThreads) {
    const double v = row[i];
    sum_squares += v * v;
  }
  sum_squares = block_sum(sum_squares);
  const float inv_rms = float(1.0 / sqrt(sum_squares / double(p.d) + double(p.eps)));
  const T* weight = static_cast<const T*>(p.weight);
  for (int64_t i = threadIdx.x; i < p.d; i += kThreads) {
    row_out[i] = __fmul_rn(to_float(weight[i]), __fmul_rn(row[i], inv_rms));
  }
}

bool cached_path_fits(const RmsnormParams& p) {
  const auto aligned = [](const void* ptr, uintptr_t a) {
    return reinterpret_cast<uintptr_t>(ptr) % a == 0;
  };
  return p.d % 4 == 0 && p.d <= int64_t(kMaxCachedVecs) * 4 * kThreads && aligned(p.x, 16) &&
         aligned(p.out, 16) && aligned(p.weight, 16);
}

void launch_rmsnorm(const RmsnormParams& p, DType weight_dtype, int64_t n, cudaStream_t stream) {
  const unsigned blocks = unsigned(n);
  if (cached_path_fits(p)) {
    switch (weight_dtype) {
      case DType::BF16:
        rmsnorm_cached_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p);
        break;
      case DType::F16:
        rmsnorm_cached_kernel<__half><<<blocks, kThreads, 0, stream>>>(p);
        break;
      default:
        rmsnorm_cached_kernel<float><<<blocks, kThreads, 0, stream>>>(p);
        break;
    }
    check_launch("rmsnorm", "rmsnorm_cached_kernel");
    return;
  }
  switch (weight_dtype) {
    case DType::BF16:
      rmsnorm_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p);
      break;
    case DType::F16:
      rmsnorm_kernel<__half><<<blocks, kThreads, 0, stream>>>(p);
      break;
    default:
      rmsnorm_kernel<float><<<blocks, kThreads, 0, stream>>>(p);
      break;
  }
  check_launch("rmsnorm", "rmsnorm_kernel");
}

}  // namespace

void rmsnorm(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const char* op = "rmsnorm";
  require_tensor(x, DType::F32, 2, op, "x");
  require_on_device(weight, op, "weight");
  require(is_float_weight(weight.dtype()), op, "weight must be bf16, f16 or f32");
  require(weight.numel() == x.dim(1), op,
          "weight has " + std::to_string(weight.numel()) + " elements for rows of " +
              std::to_string(x.dim(1)));
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, x.shape(), op, "out");
  if (x.numel() == 0) return;
  checked_int(x.dim(0), op, "rows");
  const RmsnormParams p{x.data_as<const float>(), weight.data(), out.data_as<float>(), x.dim(1),
                        eps};
  launch_rmsnorm(p, weight.dtype(), x.dim(0), ctx.stream());
}

}  // namespace llamaq::cuda
