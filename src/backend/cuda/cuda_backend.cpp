#include "backend/cuda/cuda_backend.h"

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"
#include "backend/cuda/upload.h"

namespace llamaq {

std::unique_ptr<Backend> make_cuda_backend(int device, cuda::CudaBackendOptions options) {
  return std::make_unique<cuda::CudaBackend>(device, options);
}

namespace cuda {

Tensor CudaBackend::alloc(DType dtype, Shape shape) {
  ctx_.activate("alloc");
  return ctx_.zeros(dtype, std::move(shape), "alloc");
}

Tensor CudaBackend::upload(const Tensor& host) {
  ctx_.activate("upload");
  return upload_tensor(ctx_, host, "upload");
}

LinearWeight CudaBackend::upload_linear(const LinearWeight& host) {
  LinearWeight device;  // without any LoRA branch: the model uploads that itself
  if (host.quantized()) {
    device.nf4 = device_nf4(host.nf4);
  } else {
    device.weight = upload(host.weight);
  }
  return device;
}

std::shared_ptr<const nf4::Nf4Weight> CudaBackend::device_nf4(
    const std::shared_ptr<const nf4::Nf4Weight>& w) {
  if (w->packed.device() == Device::Cuda) return w;
  std::lock_guard lock(nf4_mutex_);
  auto it = nf4_uploads_.find(w.get());
  if (it == nf4_uploads_.end()) {
    ctx_.activate("upload");
    it = nf4_uploads_.emplace(w.get(), Nf4Upload{w, upload_nf4(ctx_, *w)}).first;
  }
  return it->second.device;
}

void CudaBackend::copy_from_host(Tensor& dst, const void* src) {
  const char* op = "copy_from_host";
  ctx_.activate(op);
  require_on_device(dst, op, "dst");
  if (dst.nbytes() == 0) return;
  // From pageable memory the call returns once `src` has been staged, so `src` may go away.
  check_cuda(
      cudaMemcpyAsync(dst.data(), src, size_t(dst.nbytes()), cudaMemcpyHostToDevice, ctx_.stream()),
      op, "cudaMemcpyAsync");
}

void CudaBackend::copy_to_host(const Tensor& src, void* dst) {
  const char* op = "copy_to_host";
  ctx_.activate(op);
  require_on_device(src, op, "src");
  if (src.nbytes() > 0) {
    check_cuda(cudaMemcpyAsync(dst, src.data(), size_t(src.nbytes()), cudaMemcpyDeviceToHost,
                               ctx_.stream()),
               op, "cudaMemcpyAsync");
  }
  ctx_.synchronize(op);
}

void CudaBackend::embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  ctx_.activate("embedding");
  cuda::embedding(ctx_, table, ids, out);
}

void CudaBackend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  ctx_.activate("rmsnorm");
  cuda::rmsnorm(ctx_, x, weight, eps, out);
}

void CudaBackend::linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  ctx_.activate("linear");
  if (w.quantized()) {
    const std::shared_ptr<const nf4::Nf4Weight> device = device_nf4(w.nf4);
    linear_nf4(ctx_, x, *device, out, Nf4Path::Auto, &nf4_workspace_);
  } else {
    linear_dense(ctx_, x, w.weight, out);
  }
}

void CudaBackend::rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  ctx_.activate("rope");
  cuda::rope(ctx_, x, positions, inv_freq);
}

void CudaBackend::kv_store(const Tensor& k, const Tensor& v, const Tensor& positions,
                           const KvLayerView& kv) {
  ctx_.activate("kv_store");
  cuda::kv_store(ctx_, k, v, positions, kv);
}

void CudaBackend::attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                            Tensor& out) {
  ctx_.activate("attention");
  cuda::attention(
      ctx_, q, positions, kv, out,
      options_.attention == AttentionImpl::Naive ? AttentionPath::Naive : AttentionPath::Auto);
}

void CudaBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  ctx_.activate("swiglu");
  cuda::swiglu(ctx_, gate, up, out);
}

void CudaBackend::add_inplace(Tensor& x, const Tensor& y) {
  ctx_.activate("add_inplace");
  cuda::add_inplace(ctx_, x, y);
}

}  // namespace cuda
}  // namespace llamaq
