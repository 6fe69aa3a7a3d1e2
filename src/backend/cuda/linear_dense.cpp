// Dense linear: out[n, out] = x[n, in] W[out, in]^T. Few tokens with bf16/f16 weights: our GEMV
// kernel (dense_gemv.cu). Otherwise cuBLAS: bf16/f16 weights: the f32
// activations are rounded to the weight's type in a scratch buffer and multiplied with fp32
// accumulation and f32 output (cublasGemmEx, CUBLAS_COMPUTE_32F). f32 weights: plain fp32 GEMM
// (the handle's default math mode, so no TF32).
#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

// Row-major out = x w^T is column-major out^T = w x^T: cuBLAS sees W as op(A) = A^T with A the
// [in, out] column-major view of W, and x^T as the [in, n] column-major view of x.
void gemm(CudaContext& ctx, const void* x, const Tensor& weight, float* out, int n, int in,
          int out_features) {
  gemm_f32_out(ctx, "linear", CUBLAS_OP_T, CUBLAS_OP_N, out_features, n, in, weight.data(),
               cuda_data_type(weight.dtype()), in, x, in, 1.0f, 0.0f, out, out_features);
}

}  // namespace

void linear_dense(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out,
                  DensePath path) {
  const char* op = "linear";
  require_tensor(x, DType::F32, 2, op, "x");
  require_on_device(weight, op, "weight");
  require(weight.rank() == 2 && is_float_weight(weight.dtype()), op,
          "weight must be a bf16, f16 or f32 matrix");
  const int64_t n = x.dim(0);
  require(x.dim(1) == weight.dim(1), op,
          "x " + shape_to_string(x.shape()) + " does not fit weight " +
              shape_to_string(weight.shape()));
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, {n, weight.dim(0)}, op, "out");
  if (out.numel() == 0) return;
  const int rows = checked_int(n, op, "tokens");
  const int in = checked_int(weight.dim(1), op, "in_features");
  const int out_features = checked_int(weight.dim(0), op, "out_features");
  if (in == 0) {
    check_cuda(cudaMemsetAsync(out.data(), 0, size_t(out.nbytes()), ctx.stream()), op,
               "cudaMemsetAsync");
    return;
  }
  if (path == DensePath::Gemv) {
    require(dense_gemv_supported(x, weight), op, "the dense GEMV does not support this shape");
  }
  if (path == DensePath::Gemv || (path == DensePath::Auto && n <= kDenseGemvAutoMaxTokens &&
                                  dense_gemv_supported(x, weight))) {
    dense_gemv(ctx, x, weight, out);
    return;
  }
  if (weight.dtype() == DType::F32) {
    gemm(ctx, x.data(), weight, out.data_as<float>(), rows, in, out_features);
    return;
  }
  Tensor x16 = ctx.empty(weight.dtype(), x.shape(), op);
  convert_activations(ctx, x, x16, op);
  gemm(ctx, x16.data(), weight, out.data_as<float>(), rows, in, out_features);
}

}  // namespace llamaq::cuda
