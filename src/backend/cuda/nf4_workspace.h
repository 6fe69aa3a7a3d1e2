// Per-backend state of the NF4 prefill path (dequantize, then a bf16 GEMM through cuBLASLt): one
// dense buffer that every projection dequantizes into (sized for the largest projection seen, so
// allocated once per model shape), the cuBLASLt handle, its workspace and one cached plan
// (descriptors and heuristic algorithm) per GEMM shape. All use is ordered on the backend's one
// stream, so successive linears can share the buffer.
#pragma once

#include <cublasLt.h>

#include <array>
#include <cstddef>
#include <map>
#include <memory>

#include "backend/cuda/cuda_context.h"
#include "core/tensor.h"

namespace llamaq::cuda {

class Nf4Workspace {
 public:
  explicit Nf4Workspace(CudaContext& ctx) : ctx_(ctx) {}
  ~Nf4Workspace();
  Nf4Workspace(const Nf4Workspace&) = delete;
  Nf4Workspace& operator=(const Nf4Workspace&) = delete;

  // A [rows, cols] `dtype` view of the shared dense buffer (contents undefined), 256-byte aligned.
  Tensor dense(DType dtype, int64_t rows, int64_t cols);

  // out = x weight^T with fp32 accumulation and f32 output through cuBLASLt.
  void gemm(const void* x,         // [n, in] of weight's dtype (bf16 or f16)
            const Tensor& weight,  // [out_features, in] bf16 or f16
            float* out,            // [n, out_features] f32
            int n, int in, int out_features);

  static constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;  // cuBLAS' advice for Hopper

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(DType dtype, int n, int in, int out_features);

  CudaContext& ctx_;
  std::shared_ptr<const void> buffer_;
  size_t buffer_bytes_ = 0;
  cublasLtHandle_t lt_ = nullptr;
  std::shared_ptr<const void> lt_workspace_;
  std::map<std::array<int, 4>, Plan> plans_;  // {dtype, n, in, out_features}
};

}  // namespace llamaq::cuda
