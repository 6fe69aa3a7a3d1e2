// RoPE, HF rotate-half layout: pairs (j, j + head_dim/2) of every head are rotated by
// angle = float(pos) * inv_freq[j] (fp32, as HF and the CPU compute it), with cos and sin taken in
// double and rounded to fp32. One block per token: the block computes its cos/sin table once in
// shared memory, then rotates every head. Products and sums are rounded one by one (no FMA
// contraction), so the result is bit-identical to the CPU reference.
//
// rope_backward rotates by -angle (the gradient of a rotation is the inverse rotation): the same
// kernel with the sine table negated, which rounds exactly as the CPU's backward (a*c + b*s is
// a*c - b*(-s) bit for bit).
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct RopeParams {
  float* x;                  // [n, heads, head_dim] f32, rotated in place (or its gradient)
  const int32_t* positions;  // [n] i32
  const float* inv_freq;     // [head_dim / 2] f32
  int heads;
  int half;  // head_dim / 2
};

template <bool kInverse>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p) {
  allow_dependents_to_launch();
  extern __shared__ float table[];  // cos [half], then sin [half]
  float* cos_v = table;
  float* sin_v = table + p.half;
  const int64_t t = blockIdx.x;
  const float pos = float(p.positions[t]);
  for (int j = threadIdx.x; j < p.half; j += kThreads) {
    double s, c;
    sincos(double(__fmul_rn(pos, p.inv_freq[j])), &s, &c);
    cos_v[j] = float(c);
    sin_v[j] = kInverse ? -float(s) : float(s);
  }
  __syncthreads();
  const int head_dim = 2 * p.half;
  float* token = p.x + t * p.heads * head_dim;
  for (int i = threadIdx.x; i < p.heads * p.half; i += kThreads) {
    const int h = i / p.half;
    const int j = i % p.half;
    float* v = token + h * head_dim;
    const float a = v[j];
    const float b = v[j + p.half];
    v[j] = __fsub_rn(__fmul_rn(a, cos_v[j]), __fmul_rn(b, sin_v[j]));
    v[j + p.half] = __fadd_rn(__fmul_rn(b, cos_v[j]), __fmul_rn(a, sin_v[j]));
  }
}

// Rotates x by +angle, or by -angle when `inverse`; `op` names the caller in errors.
void rotate(CudaContext& ctx, Tensor& x, const Tensor& positions, const Tensor& inv_freq,
            bool inverse, const char* op) {
  require_tensor(x, DType::F32, 3, op, inverse ? "grad" : "x");
  const int64_t n = x.dim(0);
  require(x.dim(2) % 2 == 0, op, "head_dim must be even");
  require_tensor(positions, DType::I32, 1, op, "positions");
  require_shape(positions, {n}, op, "positions");
  require_tensor(inv_freq, DType::F32, 1, op, "inv_freq");
  require_shape(inv_freq, {x.dim(2) / 2}, op, "inv_freq");
  require(x.dim(2) / 2 <= 4096, op, "head_dim above 8192 is not supported");
  if (x.numel() == 0) return;
  checked_int(x.numel(), op, "elements");
  const RopeParams p{x.data_as<float>(), positions.data_as<const int32_t>(),
                     inv_freq.data_as<const float>(), int(x.dim(1)), int(x.dim(2) / 2)};
  const size_t shared = 2 * size_t(p.half) * sizeof(float);
  if (inverse) {
    rope_kernel<true><<<unsigned(n), kThreads, shared, ctx.stream()>>>(p);
  } else {
    rope_kernel<false><<<unsigned(n), kThreads, shared, ctx.stream()>>>(p);
  }
  check_launch(op, "rope_kernel");
}

}  // namespace

void rope(CudaContext& ctx, Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  rotate(ctx, x, positions, inv_freq, /*inverse=*/false, "rope");
}

void rope_backward(CudaContext& ctx, Tensor& grad, const Tensor& positions,
                   const Tensor& inv_freq) {
  rotate(ctx, grad, positions, inv_freq, /*inverse=*/true, "rope_backward");
}

}  // namespace llamaq::cuda
