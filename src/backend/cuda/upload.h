// Device copies of host tensors and of NF4 weights (the weights' one-time upload).
#pragma once

#include <memory>

#include "backend/cuda/cuda_context.h"
#include "quant/nf4.h"

namespace llamaq::cuda {

// A device copy of a host tensor (a device tensor is returned as is); waits for the copy.
Tensor upload_tensor(CudaContext& ctx, const Tensor& host, const char* op);

// A copy of `host` in pinned, device-mapped host memory: a Device::Cuda tensor that kernels read
// over the bus (with unified addressing the host pointer is the device pointer). For tables read a
// few rows at a time; freed with cudaFreeHost when the last reference goes.
Tensor copy_to_pinned_host(const Tensor& host, const char* op);

// A copy of `host` whose tensors live on the device; checks the layout first.
std::shared_ptr<const nf4::Nf4Weight> upload_nf4(CudaContext& ctx, const nf4::Nf4Weight& host);

}  // namespace llamaq::cuda
