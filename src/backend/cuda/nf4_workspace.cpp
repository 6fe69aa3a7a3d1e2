#include "backend/cuda/nf4_workspace.h"

#include <string>

#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/cuda_check.h"

namespace llamaq::cuda {
namespace {

constexpr const char* kOp = "linear";

template <typename T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute,
                   const T& value) {
  check_cublas(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof value), kOp,
               "cublasLtMatmulDescSetAttribute");
}

}  // namespace

Nf4Workspace::~Nf4Workspace() {
  for (auto& [key, p] : plans_) {
    (void)cublasLtMatrixLayoutDestroy(p.a);
    (void)cublasLtMatrixLayoutDestroy(p.b);
    (void)cublasLtMatrixLayoutDestroy(p.c);
    (void)cublasLtMatmulDescDestroy(p.desc);
  }
  if (lt_) (void)cublasLtDestroy(lt_);
}

Tensor Nf4Workspace::dense(DType dtype, int64_t rows, int64_t cols) {
  const size_t bytes = size_t((rows * cols * dtype_bits(dtype) + 7) / 8);
  if (bytes > buffer_bytes_) {
    buffer_.reset();  // back to the caching allocator first, so that its memory can be reused
    buffer_ = ctx_.empty(DType::U8, {int64_t(bytes)}, kOp).owner();
    buffer_bytes_ = bytes;
  }
  return Tensor(const_cast<void*>(buffer_.get()), dtype, {rows, cols}, Device::Cuda, buffer_);
}

// Row-major out = x w^T is column-major out^T = W^T x^T: A is the [in, out] column-major view of
// W, transposed; B the [in, n] column-major view of x; C the [out, n] column-major view of out.
const Nf4Workspace::Plan& Nf4Workspace::plan(DType dtype, int n, int in, int out_features) {
  const std::array<int, 4> key{int(dtype), n, in, out_features};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  if (!lt_) {
    check_cublas(cublasLtCreate(&lt_), kOp, "cublasLtCreate");
    lt_workspace_ = ctx_.empty(DType::U8, {int64_t(kLtWorkspaceBytes)}, kOp).owner();
  }
  Plan p;
  const cudaDataType_t type = cuda_data_type(dtype);
  check_cublas(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), kOp,
               "cublasLtMatmulDescCreate");
  set_attribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  set_attribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  check_cublas(cublasLtMatrixLayoutCreate(&p.a, type, uint64_t(in), uint64_t(out_features), in),
               kOp, "cublasLtMatrixLayoutCreate");
  check_cublas(cublasLtMatrixLayoutCreate(&p.b, type, uint64_t(in), uint64_t(n), in), kOp,
               "cublasLtMatrixLayoutCreate");
  check_cublas(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, uint64_t(out_features), uint64_t(n),
                                          out_features),
               kOp, "cublasLtMatrixLayoutCreate");
  cublasLtMatmulPreference_t preference = nullptr;
  check_cublas(cublasLtMatmulPreferenceCreate(&preference), kOp, "cublasLtMatmulPreferenceCreate");
  const size_t workspace = kLtWorkspaceBytes;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace);
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = cublasLtMatmulAlgoGetHeuristic(lt_, p.desc, p.a, p.b, p.c, p.c, preference, 1, &result,
                                            &found);
  }
  (void)cublasLtMatmulPreferenceDestroy(preference);
  check_cublas(status, kOp, "cublasLtMatmulAlgoGetHeuristic");
  if (found == 0) {
    fail_op(kOp, "cuBLASLt has no algorithm for a " + std::to_string(n) + "x" + std::to_string(in) +
                     " by " + std::to_string(out_features) + " GEMM");
  }
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void Nf4Workspace::gemm(const void* x, const Tensor& weight, float* out, int n, int in,
                        int out_features) {
  const Plan& p = plan(weight.dtype(), n, in, out_features);
  const float alpha = 1.0f;
  const float beta = 0.0f;
  check_cublas(cublasLtMatmul(lt_, p.desc, &alpha, weight.data(), p.a, x, p.b, &beta, out, p.c, out,
                              p.c, &p.algo, const_cast<void*>(lt_workspace_.get()),
                              kLtWorkspaceBytes, ctx_.stream()),
               kOp, "cublasLtMatmul");
}

}  // namespace llamaq::cuda
