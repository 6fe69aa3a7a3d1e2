// Device copies of host tensors and of NF4 weights (the weights' one-time upload).
#pragma once

#include <memory>

#include "backend/cuda/cuda_context.h"
#include "quant/nf4.h"

namespace llamaq::cuda {

// A device copy of a host tensor (a device tensor is returned as is); waits for the copy.
Tensor upload_tensor(CudaContext& ctx, const Tensor& host, const char* op);

// A copy of `host` whose tensors live on the device; checks the layout first.
std::shared_ptr<const nf4::Nf4Weight> upload_nf4(CudaContext& ctx, const nf4::Nf4Weight& host);

}  // namespace llamaq::cuda
