// The CUDA backend: every op of backend.h on one NVIDIA GPU, on one stream owned by the backend.
// Activations are f32 device tensors from a caching allocator; dense weights are copied as they
// are (bf16/f16/f32) and NF4 weights as their packed tensors (upload_linear, or on first use when
// linear() receives host NF4 tensors). Errors are llamaq::Error naming the op; a bad token id
// found by the embedding kernel is raised at the next copy_to_host.
#pragma once

#include <map>
#include <memory>
#include <mutex>

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/nf4_workspace.h"

namespace llamaq {
namespace cuda {

// Which attention implementation the backend's attention op runs.
enum class AttentionImpl {
  Flash,  // split-KV for decode, tensor-core FlashAttention-2 for prefill
  Naive,  // materialized scores through cuBLAS and a separate softmax (`--attn naive`)
};

struct CudaBackendOptions {
  AttentionImpl attention = AttentionImpl::Flash;
  // The KV cache's element type: BF16 (half the memory and the decode attention's bytes) or F32.
  DType kv_dtype = DType::BF16;
  // Keep an untied token-embedding table in pinned host memory (the embedding kernel reads its
  // rows over the bus, as llama.cpp keeps its input embeddings on the host): 1 GiB less device
  // memory for Llama 3 8B, a few microseconds per decode step.
  bool embedding_on_host = true;
};

}  // namespace cuda

// The CUDA backend on `device` (a CUDA device index). Throws when the device does not exist.
std::unique_ptr<Backend> make_cuda_backend(int device = 0, cuda::CudaBackendOptions options = {});

namespace cuda {

struct Dp4aOptions;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device, CudaBackendOptions options = {})
      : ctx_(device), options_(options), nf4_workspace_(ctx_) {}

  std::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::Cuda; }
  // The CUDA attention and KV-store kernels read and write bf16 and f32 caches.
  DType preferred_kv_dtype() const override { return options_.kv_dtype; }

  Tensor alloc(DType dtype, Shape shape) override;
  Tensor upload(const Tensor& host) override;
  LinearWeight upload_linear(const LinearWeight& host) override;
  Tensor upload_embedding(const Tensor& host) override;
  void copy_from_host(Tensor& dst, const void* src) override;
  void copy_to_host(const Tensor& src, void* dst) override;

  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out) override;
  void linear_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                    std::span<Tensor* const> outs) override;
  void linear_swiglu(const Tensor& x, const LinearWeight& wg, const LinearWeight& wu, Tensor& gate,
                     Tensor& up) override;
  void linear_add(const Tensor& x, const LinearWeight& w, Tensor& residual,
                  Tensor& scratch) override;
  void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) override;
  void rope_kv_store(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                     const Tensor& inv_freq, const KvLayerView& kv) override;
  void kv_store(const Tensor& k, const Tensor& v, const Tensor& positions,
                const KvLayerView& kv) override;
  void attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                 Tensor& out) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void add_inplace(Tensor& x, const Tensor& y) override;
  void argmax(const Tensor& logits, Tensor& ids) override;
  std::unique_ptr<OpGraph> capture(const std::function<void()>& record) override;
  MemoryStats memory_stats() const override;
  void reset_peak_memory() override;
  std::unique_ptr<TimingMark> timing_mark() override;
  double elapsed_ms(const TimingMark& from, const TimingMark& to) override;

  // Training (backward_*.cu).
  void rmsnorm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                        Tensor& dx) override;
  void rope_backward(Tensor& grad, const Tensor& positions, const Tensor& inv_freq) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) override;
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& ds, Tensor& d_gate,
                       Tensor& d_up) override;
  void linear_backward_input(const Tensor& dy, const LinearWeight& w, Tensor& dx,
                             bool accumulate) override;
  void matmul_tn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override;
  void matmul_nn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override;
  void matmul_nt(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override;
  void scale(const Tensor& x, float s, Tensor& out) override;
  void multiply(const Tensor& x, const Tensor& y, Tensor& out) override;
  void zero(Tensor& x) override;
  void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask) override;
  void cross_entropy(Tensor& logits, const Tensor& targets, double normalizer,
                     Tensor& losses) override;
  double sum_of_squares(std::span<const Tensor> xs) override;
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWUpdate& update) override;
  void synchronize() override;

  // For tests and benchmarks: the context, to call the ops' alternative paths directly.
  CudaContext& context() { return ctx_; }
  Nf4Workspace& nf4_workspace() { return nf4_workspace_; }
  // The device copy of an NF4 weight (itself when its tensors are already on the device).
  std::shared_ptr<const nf4::Nf4Weight> device_nf4(const std::shared_ptr<const nf4::Nf4Weight>& w);

 private:
  bool try_nf4_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                     std::span<Tensor* const> outs, bool swiglu, const Dp4aOptions& options);
  bool try_dense_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                       std::span<Tensor* const> outs, bool swiglu, bool accumulate);
  struct Nf4Upload {
    std::shared_ptr<const nf4::Nf4Weight> host;  // keeps the key's address from being reused
    std::shared_ptr<const nf4::Nf4Weight> device;
  };

  CudaContext ctx_;
  CudaBackendOptions options_;
  Nf4Workspace nf4_workspace_;  // the NF4 prefill path's dense buffer and cuBLASLt plans
  std::mutex nf4_mutex_;
  std::map<const nf4::Nf4Weight*, Nf4Upload> nf4_uploads_;
};

}  // namespace cuda
}  // namespace llamaq
