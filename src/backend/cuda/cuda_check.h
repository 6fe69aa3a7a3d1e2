// Error checking for CUDA runtime and cuBLAS calls: every failure becomes a llamaq::Error that
// names the op and the call. Header-only and fmt-free so that .cu files can include it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"

namespace llamaq::cuda {

inline void check_cuda(cudaError_t status, const char* op, const char* call) {
  if (status != cudaSuccess) {
    throw Error(std::string("cuda ") + op + ": " + call + " failed: " + cudaGetErrorName(status) +
                " (" + cudaGetErrorString(status) + ")");
  }
}

// After a kernel launch: reports a bad configuration or an earlier asynchronous fault.
inline void check_launch(const char* op, const char* kernel) {
  check_cuda(cudaGetLastError(), op, kernel);
}

inline void check_cublas(cublasStatus_t status, const char* op, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("cuda ") + op + ": " + call +
                " failed: " + cublasGetStatusString(status));
  }
}

[[noreturn]] inline void fail_op(const char* op, const std::string& message) {
  throw Error(std::string("cuda ") + op + ": " + message);
}

}  // namespace llamaq::cuda
