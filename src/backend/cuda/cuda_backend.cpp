#include "backend/cuda/cuda_backend.h"

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_graph.h"
#include "backend/cuda/nf4_params.h"
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

Tensor CudaBackend::upload_embedding(const Tensor& host) {
  ctx_.activate("upload");
  if (!options_.embedding_on_host) return upload_tensor(ctx_, host, "upload");
  return copy_to_pinned_host(host, "upload");
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

// NF4 projections run as one dp4a launch when they can (decode), else one by one; `accumulate`
// adds into the outputs.
bool CudaBackend::try_nf4_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                                std::span<Tensor* const> outs, bool swiglu,
                                const Dp4aOptions& options) {
  if (ws.empty() || ws.size() > 3) return false;
  std::vector<std::shared_ptr<const nf4::Nf4Weight>> keep;
  std::vector<const nf4::Nf4Weight*> device;
  for (const LinearWeight* w : ws) {
    if (!w->quantized()) return false;
    keep.push_back(device_nf4(w->nf4));
    device.push_back(keep.back().get());
  }
  return linear_nf4_group(ctx_, x, device, outs, swiglu, options);
}

bool CudaBackend::try_dense_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                                  std::span<Tensor* const> outs, bool swiglu, bool accumulate) {
  if (ws.empty() || ws.size() > 3 || x.dtype() != DType::F32 || x.rank() != 2 ||
      x.dim(0) > kDenseGemvAutoMaxTokens) {
    return false;
  }
  const Tensor* dense[3] = {};
  for (size_t i = 0; i < ws.size(); ++i) {
    if (ws[i]->quantized() || ws[i]->weight.device() != Device::Cuda) return false;
    dense[i] = &ws[i]->weight;
  }
  const std::span<const Tensor* const> group(dense, ws.size());
  if (!dense_gemv_group_supported(x, group, swiglu)) return false;
  dense_gemv_group(ctx_, x, group, outs, swiglu, accumulate);
  return true;
}

// One launch for q/k/v: the dp4a GEMV (NF4) or the dense GEMV (bf16/f16, one token).
void CudaBackend::linear_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                               std::span<Tensor* const> outs) {
  ctx_.activate("linear");
  if (ws.size() == outs.size() &&
      (try_nf4_group(x, ws, outs, false, {}) || try_dense_group(x, ws, outs, false, false))) {
    return;
  }
  Backend::linear_group(x, ws, outs);
}

void CudaBackend::linear_swiglu(const Tensor& x, const LinearWeight& wg, const LinearWeight& wu,
                                Tensor& gate, Tensor& up) {
  ctx_.activate("linear");
  const LinearWeight* ws[2] = {&wg, &wu};
  Tensor* out[1] = {&gate};
  if (try_nf4_group(x, ws, out, true, {}) || try_dense_group(x, ws, out, true, false)) return;
  Backend::linear_swiglu(x, wg, wu, gate, up);
}

// residual += x w^T: in the GEMV's epilogue for NF4 (dp4a) and bf16/f16 (one token), else a
// linear into `scratch` and an add.
void CudaBackend::linear_add(const Tensor& x, const LinearWeight& w, Tensor& residual,
                             Tensor& scratch) {
  ctx_.activate("linear");
  const LinearWeight* ws[1] = {&w};
  Tensor* out[1] = {&residual};
  Dp4aOptions options;
  options.accumulate = true;
  if (try_nf4_group(x, ws, out, false, options) ||
      try_dense_group(x, ws, out, false, /*accumulate=*/true)) {
    return;
  }
  Backend::linear_add(x, w, residual, scratch);
}

// One kernel (f32 or bf16 cache).
void CudaBackend::rope_kv_store(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                                const Tensor& inv_freq, const KvLayerView& kv) {
  ctx_.activate("rope_kv_store");
  cuda::rope_kv_store(ctx_, q, k, v, positions, inv_freq, kv);
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

void CudaBackend::argmax(const Tensor& logits, Tensor& ids) {
  ctx_.activate("argmax");
  cuda::argmax(ctx_, logits, ids);
}

std::unique_ptr<OpGraph> CudaBackend::capture(const std::function<void()>& record) {
  return capture_graph(ctx_, record);
}

MemoryStats CudaBackend::memory_stats() const {
  const DeviceAllocator& a = ctx_.allocator();
  return MemoryStats{int64_t(a.live_bytes()), int64_t(a.peak_live_bytes()),
                     int64_t(a.peak_reserved_bytes())};
}

void CudaBackend::reset_peak_memory() {
  ctx_.allocator().reset_peaks();
}

std::unique_ptr<TimingMark> CudaBackend::timing_mark() {
  return std::make_unique<CudaEventMark>(ctx_);
}

double CudaBackend::elapsed_ms(const TimingMark& from, const TimingMark& to) {
  return elapsed_between(from, to);
}

// ---- Training: thin entries into backward_*.cu. ----

void CudaBackend::rmsnorm_backward(const Tensor& x, const Tensor& weight, float eps,
                                   const Tensor& dy, Tensor& dx) {
  ctx_.activate("rmsnorm_backward");
  cuda::rmsnorm_backward(ctx_, x, weight, eps, dy, dx);
}

void CudaBackend::rope_backward(Tensor& grad, const Tensor& positions, const Tensor& inv_freq) {
  ctx_.activate("rope_backward");
  cuda::rope_backward(ctx_, grad, positions, inv_freq);
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& d_out, Tensor& dq, Tensor& dk,
                                     Tensor& dv) {
  ctx_.activate("attention_backward");
  if (options_.attention == AttentionImpl::Naive) {
    cuda::attention_backward_naive(ctx_, q, k, v, d_out, dq, dk, dv);
  } else if (q.rank() == 3 && cuda::attention_backward_mma_supported(q.dim(2))) {
    cuda::attention_backward_mma(ctx_, q, k, v, d_out, dq, dk, dv);
  } else {
    cuda::attention_backward(ctx_, q, k, v, out, d_out, dq, dk, dv);
  }
}

void CudaBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& ds,
                                  Tensor& d_gate, Tensor& d_up) {
  ctx_.activate("swiglu_backward");
  cuda::swiglu_backward(ctx_, gate, up, ds, d_gate, d_up);
}

void CudaBackend::linear_backward_input(const Tensor& dy, const LinearWeight& w, Tensor& dx,
                                        bool accumulate) {
  ctx_.activate("linear_backward_input");
  if (w.quantized()) {
    const std::shared_ptr<const nf4::Nf4Weight> device = device_nf4(w.nf4);
    linear_backward_input_nf4(ctx_, dy, *device, dx, accumulate);
  } else {
    linear_backward_input_dense(ctx_, dy, w.weight, dx, accumulate);
  }
}

void CudaBackend::matmul_tn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) {
  ctx_.activate("matmul_tn");
  cuda::matmul_tn(ctx_, a, b, c, u);
}

void CudaBackend::matmul_nn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) {
  ctx_.activate("matmul_nn");
  cuda::matmul_nn(ctx_, a, b, c, u);
}

void CudaBackend::matmul_nt(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) {
  ctx_.activate("matmul_nt");
  cuda::matmul_nt(ctx_, a, b, c, u);
}

void CudaBackend::scale(const Tensor& x, float s, Tensor& out) {
  ctx_.activate("scale");
  cuda::scale(ctx_, x, s, out);
}

void CudaBackend::multiply(const Tensor& x, const Tensor& y, Tensor& out) {
  ctx_.activate("multiply");
  cuda::multiply(ctx_, x, y, out);
}

void CudaBackend::zero(Tensor& x) {
  const char* op = "zero";
  ctx_.activate(op);
  require_on_device(x, op, "x");
  if (x.nbytes() == 0) return;
  check_cuda(cudaMemsetAsync(x.data(), 0, size_t(x.nbytes()), ctx_.stream()), op,
             "cudaMemsetAsync");
}

void CudaBackend::dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask) {
  ctx_.activate("dropout_mask");
  cuda::dropout_mask(ctx_, base, threshold, keep_scale, mask);
}

void CudaBackend::cross_entropy(Tensor& logits, const Tensor& targets, double normalizer,
                                Tensor& losses) {
  ctx_.activate("cross_entropy");
  cuda::cross_entropy(ctx_, logits, targets, normalizer, losses);
}

double CudaBackend::sum_of_squares(std::span<const Tensor> xs) {
  ctx_.activate("sum_of_squares");
  return cuda::sum_of_squares(ctx_, xs);
}

void CudaBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                             const AdamWUpdate& update) {
  ctx_.activate("adamw_step");
  cuda::adamw_step(ctx_, param, grad, exp_avg, exp_avg_sq, update);
}

void CudaBackend::synchronize() {
  ctx_.activate("synchronize");
  ctx_.synchronize("synchronize");
}

}  // namespace cuda
}  // namespace llamaq
