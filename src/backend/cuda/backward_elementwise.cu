// Element-wise training ops on f32 tensors: SwiGLU backward, scaling, multiplication (dropout
// masks applied) and the LoRA dropout mask itself (backend/mix64.h, the same hash as the CPU).
// Grid-stride loops; out may alias an input (same index, same thread).
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"
#include "backend/mix64.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

#define LLAMAQ_GRID_STRIDE(i, n)                                            \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

struct SwigluBackwardParams {
  const float* gate;  // [numel] f32
  const float* up;    // [numel] f32
  const float* ds;    // [numel] f32
  float* d_gate;      // [numel] f32
  float* d_up;        // [numel] f32
  int64_t numel;
};

// d silu(g) / dg = sig (1 + g (1 - sig)), in the CPU reference's order of operations.
__global__ void swiglu_backward_kernel(SwigluBackwardParams p) {
  LLAMAQ_GRID_STRIDE(i, p.numel) {
    const float g = p.gate[i];
    const float sig = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
    const float silu = __fmul_rn(g, sig);
    const float d = p.ds[i];
    p.d_up[i] = __fmul_rn(d, silu);
    const float slope = __fmul_rn(sig, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sig))));
    p.d_gate[i] = __fmul_rn(__fmul_rn(d, p.up[i]), slope);
  }
}

__global__ void scale_kernel(const float* x, float s, float* out, int64_t numel) {
  LLAMAQ_GRID_STRIDE(i, numel) {
    out[i] = __fmul_rn(x[i], s);
  }
}

__global__ void multiply_kernel(const float* x, const float* y, float* out, int64_t numel) {
  LLAMAQ_GRID_STRIDE(i, numel) {
    out[i] = __fmul_rn(x[i], y[i]);
  }
}

__global__ void dropout_mask_kernel(uint64_t base, uint64_t threshold, float keep_scale,
                                    float* mask, int64_t numel) {
  LLAMAQ_GRID_STRIDE(i, numel) {
    mask[i] = mix64(base + uint64_t(i)) < threshold ? keep_scale : 0.0f;
  }
}

void require_same_f32(const Tensor& a, const Tensor& b, const char* op, const char* a_name,
                      const char* b_name) {
  require_on_device(a, op, a_name);
  require_on_device(b, op, b_name);
  require(a.dtype() == DType::F32 && b.dtype() == DType::F32, op,
          std::string(a_name) + " and " + b_name + " must be f32");
  require(a.shape() == b.shape(), op,
          std::string(a_name) + " " + shape_to_string(a.shape()) + " and " + b_name + " " +
              shape_to_string(b.shape()) + " differ");
}

}  // namespace

void swiglu_backward(CudaContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& ds,
                     Tensor& d_gate, Tensor& d_up) {
  const char* op = "swiglu_backward";
  require_same_f32(gate, up, op, "gate", "up");
  require_same_f32(gate, ds, op, "gate", "ds");
  require_same_f32(gate, d_gate, op, "gate", "d_gate");
  require_same_f32(gate, d_up, op, "gate", "d_up");
  if (gate.numel() == 0) return;
  const SwigluBackwardParams p{gate.data_as<const float>(), up.data_as<const float>(),
                               ds.data_as<const float>(),   d_gate.data_as<float>(),
                               d_up.data_as<float>(),       gate.numel()};
  swiglu_backward_kernel<<<grid_size(p.numel, kThreads), kThreads, 0, ctx.stream()>>>(p);
  check_launch(op, "swiglu_backward_kernel");
}

void scale(CudaContext& ctx, const Tensor& x, float s, Tensor& out) {
  const char* op = "scale";
  require_same_f32(x, out, op, "x", "out");
  if (x.numel() == 0) return;
  scale_kernel<<<grid_size(x.numel(), kThreads), kThreads, 0, ctx.stream()>>>(
      x.data_as<const float>(), s, out.data_as<float>(), x.numel());
  check_launch(op, "scale_kernel");
}

void multiply(CudaContext& ctx, const Tensor& x, const Tensor& y, Tensor& out) {
  const char* op = "multiply";
  require_same_f32(x, y, op, "x", "y");
  require_same_f32(x, out, op, "x", "out");
  if (x.numel() == 0) return;
  multiply_kernel<<<grid_size(x.numel(), kThreads), kThreads, 0, ctx.stream()>>>(
      x.data_as<const float>(), y.data_as<const float>(), out.data_as<float>(), x.numel());
  check_launch(op, "multiply_kernel");
}

void dropout_mask(CudaContext& ctx, uint64_t base, uint64_t threshold, float keep_scale,
                  Tensor& mask) {
  const char* op = "dropout_mask";
  require_on_device(mask, op, "mask");
  require(mask.dtype() == DType::F32, op, "mask must be f32");
  if (mask.numel() == 0) return;
  dropout_mask_kernel<<<grid_size(mask.numel(), kThreads), kThreads, 0, ctx.stream()>>>(
      base, threshold, keep_scale, mask.data_as<float>(), mask.numel());
  check_launch(op, "dropout_mask_kernel");
}

}  // namespace llamaq::cuda
