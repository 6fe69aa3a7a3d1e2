// The GEMMs of the backward pass, through cuBLAS on the backend's stream.
// - linear_backward_input: dx[n, in] (+)= dy[n, out] W[out, in]. bf16/f16 W: dy rounded to W's type
//   in a scratch buffer, fp32 accumulation and f32 output (tensor cores). NF4 W: the one weight
//   is dequantized into a scratch matrix of its original dtype (reused through the caching
//   allocator, so one projection's bf16 copy at a time, never the model's), then the same GEMM.
// - matmul_tn / matmul_nn / matmul_nt: f32 GEMMs (the handle's default math, no TF32) for the
//   LoRA branch, whose inner dimension is the rank, the tokens or the projection's input; the
//   LoRA scaling is the GEMM's alpha and the sum into an existing result its beta = 1.
// Row-major A[m, k] is the column-major [k, m] matrix A^T, so each row-major product is computed
// as its transpose in column-major terms.
#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

void require_f32_matrix(const Tensor& t, const char* op, const char* name) {
  require_tensor(t, DType::F32, 2, op, name);
}

// dx^T[in, n] = W^T[in, out] dy^T[out, n]: W row-major [out, in] is column-major [in, out].
void backward_input_gemm(CudaContext& ctx, const Tensor& dy, const Tensor& weight, Tensor& dx,
                         bool accumulate) {
  const char* op = "linear_backward_input";
  const int n = checked_int(dy.dim(0), op, "tokens");
  const int out = checked_int(weight.dim(0), op, "out_features");
  const int in = checked_int(weight.dim(1), op, "in_features");
  const float beta = accumulate ? 1.0f : 0.0f;
  if (weight.dtype() == DType::F32) {
    gemm_f32_out(ctx, op, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weight.data(), CUDA_R_32F, in,
                 dy.data(), out, 1.0f, beta, dx.data_as<float>(), in);
    return;
  }
  Tensor dy16 = ctx.empty(weight.dtype(), dy.shape(), op);
  convert_activations(ctx, dy, dy16, op);
  gemm_f32_out(ctx, op, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weight.data(),
               cuda_data_type(weight.dtype()), in, dy16.data(), out, 1.0f, beta,
               dx.data_as<float>(), in);
}

void check_backward_input(const Tensor& dy, int64_t out, int64_t in, const Tensor& dx) {
  const char* op = "linear_backward_input";
  require_f32_matrix(dy, op, "dy");
  require(dy.dim(1) == out, op,
          "dy " + shape_to_string(dy.shape()) + " does not fit a weight with " +
              std::to_string(out) + " outputs");
  require_f32_matrix(dx, op, "dx");
  require_shape(dx, {dy.dim(0), in}, op, "dx");
}

}  // namespace

void linear_backward_input_dense(CudaContext& ctx, const Tensor& dy, const Tensor& weight,
                                 Tensor& dx, bool accumulate) {
  const char* op = "linear_backward_input";
  require_on_device(weight, op, "weight");
  require(weight.rank() == 2 && is_float_weight(weight.dtype()), op,
          "weight must be a bf16, f16 or f32 matrix");
  check_backward_input(dy, weight.dim(0), weight.dim(1), dx);
  if (dx.numel() == 0) return;
  if (weight.dim(0) == 0) {
    if (!accumulate) {
      check_cuda(cudaMemsetAsync(dx.data(), 0, size_t(dx.nbytes()), ctx.stream()), op,
                 "cudaMemsetAsync");
    }
    return;
  }
  backward_input_gemm(ctx, dy, weight, dx, accumulate);
}

void linear_backward_input_nf4(CudaContext& ctx, const Tensor& dy, const nf4::Nf4Weight& w,
                               Tensor& dx, bool accumulate) {
  const char* op = "linear_backward_input";
  check_backward_input(dy, w.rows, w.cols, dx);
  if (dx.numel() == 0) return;
  Tensor dense = ctx.empty(w.original_dtype, {w.rows, w.cols}, op);
  dequantize_nf4(ctx, w, dense);
  backward_input_gemm(ctx, dy, dense, dx, accumulate);
}

namespace {

// The f32 operands and result of a LoRA product c [rows, cols] with inner dimension `inner`.
struct LoraGemm {
  int rows, cols, inner;
};

LoraGemm check_lora_gemm(const char* op, const Tensor& a, const Tensor& b, const Tensor& c,
                         int64_t rows, int64_t cols, int64_t a_inner, int64_t b_inner) {
  require_f32_matrix(a, op, "a");
  require_f32_matrix(b, op, "b");
  require_f32_matrix(c, op, "c");
  require(a_inner == b_inner, op,
          "a " + shape_to_string(a.shape()) + " does not fit b " + shape_to_string(b.shape()));
  require_shape(c, {rows, cols}, op, "c");
  return {checked_int(rows, op, "rows"), checked_int(cols, op, "columns"),
          checked_int(a_inner, op, "inner dimension")};
}

// With an empty inner dimension the product is zero: c keeps its values or becomes zero.
bool empty_product(CudaContext& ctx, const char* op, const LoraGemm& g, Tensor& c,
                   const GemmUpdate& update) {
  if (c.numel() == 0) return true;
  if (g.inner != 0) return false;
  if (!update.accumulate) {
    check_cuda(cudaMemsetAsync(c.data(), 0, size_t(c.nbytes()), ctx.stream()), op,
               "cudaMemsetAsync");
  }
  return true;
}

}  // namespace

// c^T[q, p] = b^T[q, n] a[n, p]: b row-major [n, q] is column-major [q, n] (no transpose), a
// row-major [n, p] is column-major [p, n] (transposed).
void matmul_tn(CudaContext& ctx, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update) {
  const char* op = "matmul_tn";
  const LoraGemm g = check_lora_gemm(op, a, b, c, a.dim(1), b.dim(1), a.dim(0), b.dim(0));
  if (empty_product(ctx, op, g, c, update)) return;
  gemm_f32_out(ctx, op, CUBLAS_OP_N, CUBLAS_OP_T, g.cols, g.rows, g.inner, b.data(), CUDA_R_32F,
               g.cols, a.data(), g.rows, update.alpha, update.accumulate ? 1.0f : 0.0f,
               c.data_as<float>(), g.cols);
}

// c^T[q, n] = b^T[q, p] a^T[p, n]: both row-major operands are their column-major transposes.
void matmul_nn(CudaContext& ctx, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update) {
  const char* op = "matmul_nn";
  const LoraGemm g = check_lora_gemm(op, a, b, c, a.dim(0), b.dim(1), a.dim(1), b.dim(0));
  if (empty_product(ctx, op, g, c, update)) return;
  gemm_f32_out(ctx, op, CUBLAS_OP_N, CUBLAS_OP_N, g.cols, g.rows, g.inner, b.data(), CUDA_R_32F,
               g.cols, a.data(), g.inner, update.alpha, update.accumulate ? 1.0f : 0.0f,
               c.data_as<float>(), g.cols);
}

// c^T[q, n] = b[q, p] a^T[p, n]: b row-major [q, p] is column-major [p, q] (transposed).
void matmul_nt(CudaContext& ctx, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update) {
  const char* op = "matmul_nt";
  const LoraGemm g = check_lora_gemm(op, a, b, c, a.dim(0), b.dim(0), a.dim(1), b.dim(1));
  if (empty_product(ctx, op, g, c, update)) return;
  gemm_f32_out(ctx, op, CUBLAS_OP_T, CUBLAS_OP_N, g.cols, g.rows, g.inner, b.data(), CUDA_R_32F,
               g.inner, a.data(), g.inner, update.alpha, update.accumulate ? 1.0f : 0.0f,
               c.data_as<float>(), g.cols);
}

}  // namespace llamaq::cuda
