// cuBLAS GEMMs with fp32 accumulation and an f32 result, shared by the forward linear, its
// backward, the LoRA gradient products and the roofline measurement. cuBLAS is column-major:
// callers pass a row-major [r, c] matrix as the column-major [c, r] one (its transpose).
#pragma once

#include <cublas_v2.h>

#include "backend/cuda/cuda_context.h"
#include "core/tensor.h"

namespace llamaq::cuda {

// bf16 -> CUDA_R_16BF, f16 -> CUDA_R_16F, anything else -> CUDA_R_32F.
cudaDataType_t cuda_data_type(DType dtype);

// Column-major C[m, n] = alpha op(A) op(B) + beta C on the context's stream; A and B of `type`,
// CUBLAS_COMPUTE_32F (f32 operands: the handle's default math, no TF32). `op` names the caller
// in errors.
void gemm_f32_out(CudaContext& ctx, const char* op, cublasOperation_t op_a, cublasOperation_t op_b,
                  int m, int n, int k, const void* a, cudaDataType_t type, int lda, const void* b,
                  int ldb, float alpha, float beta, float* c, int ldc);

}  // namespace llamaq::cuda
