#include "backend/cuda/cublas_gemm.h"

#include "backend/cuda/cuda_check.h"

namespace llamaq::cuda {

cudaDataType_t cuda_data_type(DType dtype) {
  switch (dtype) {
    case DType::BF16:
      return CUDA_R_16BF;
    case DType::F16:
      return CUDA_R_16F;
    default:
      return CUDA_R_32F;
  }
}

void gemm_f32_out(CudaContext& ctx, const char* op, cublasOperation_t op_a, cublasOperation_t op_b,
                  int m, int n, int k, const void* a, cudaDataType_t type, int lda, const void* b,
                  int ldb, float alpha, float beta, float* c, int ldc) {
  check_cublas(cublasGemmEx(ctx.cublas(), op_a, op_b, m, n, k, &alpha, a, type, lda, b, type, ldb,
                            &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               op, "cublasGemmEx");
}

}  // namespace llamaq::cuda
