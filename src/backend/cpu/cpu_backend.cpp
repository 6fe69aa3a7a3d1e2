#include "backend/cpu/cpu_backend.h"

#include <cstring>

#include "backend/cpu/attention_tiled.h"
#include "backend/cpu/backward.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/fast_linear.h"
#include "backend/cpu/train_ops.h"
#include "core/error.h"

namespace llamaq {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int n_threads, cpu::Isa isa, std::optional<DType> kv_dtype)
      : pool_(n_threads),
        isa_(isa),
        kv_dtype_(kv_dtype.value_or(isa == cpu::Isa::Reference ? DType::F32 : DType::BF16)) {
    if (!cpu::isa_supported(isa))
      fail("cpu backend: this CPU does not support {}", cpu::isa_name(isa));
    if (!cpu::kv_dtype_supported(kv_dtype_)) {
      fail("cpu backend: a KV cache of {} is not supported (f32, bf16, f16 or i8 for q8)",
           dtype_name(kv_dtype_));
    }
    if (isa != cpu::Isa::Reference) kernels_ = cpu::kernels_for(isa);
  }

  std::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::Cpu; }
  DType preferred_kv_dtype() const override { return kv_dtype_; }

  Tensor alloc(DType dtype, Shape shape) override { return Tensor::zeros(dtype, std::move(shape)); }
  Tensor upload(const Tensor& host) override { return host; }
  LinearWeight upload_linear(const LinearWeight& host) override {
    return isa_ == cpu::Isa::Reference ? host : cpu::prepare_fast_linear(host);
  }
  void copy_from_host(Tensor& dst, const void* src) override {
    std::memcpy(dst.data(), src, size_t(dst.nbytes()));
  }
  void copy_to_host(const Tensor& src, void* dst) override {
    std::memcpy(dst, src.data(), size_t(src.nbytes()));
  }

  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override {
    cpu::embedding(pool_, table, ids, out);
  }
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    cpu::rmsnorm(pool_, x, weight, eps, out);
  }
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out) override {
    if (isa_ != cpu::Isa::Reference && cpu::fast_linear_applies(w)) {
      cpu::fast_linear(pool_, kernels_, x, w, out, scratch_);
    } else {
      cpu::linear(pool_, x, w, out);
    }
  }
  void linear_group(const Tensor& x, std::span<const LinearWeight* const> ws,
                    std::span<Tensor* const> outs) override {
    if (isa_ != cpu::Isa::Reference && cpu::fast_linear_group_applies(ws)) {
      cpu::fast_linear_group(pool_, kernels_, x, ws, outs, scratch_);
    } else {
      Backend::linear_group(x, ws, outs);
    }
  }
  void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) override {
    cpu::rope(pool_, x, positions, inv_freq);
  }
  void kv_store(const Tensor& k, const Tensor& v, const Tensor& positions,
                const KvLayerView& kv) override {
    cpu::kv_store(k, v, positions, kv);
  }
  void attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                 Tensor& out) override {
    if (isa_ == cpu::Isa::Reference) {
      cpu::attention(pool_, q, positions, kv, out);
    } else {
      cpu::attention_tiled(pool_, q, positions, kv, out, kernels_.widen_scales);
    }
  }
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    cpu::swiglu(pool_, gate, up, out);
  }
  void add_inplace(Tensor& x, const Tensor& y) override { cpu::add_inplace(pool_, x, y); }
  void argmax(const Tensor& logits, Tensor& ids) override { cpu::argmax(logits, ids); }

  void rmsnorm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                        Tensor& dx) override {
    cpu::rmsnorm_backward(pool_, x, weight, eps, dy, dx);
  }
  void rope_backward(Tensor& grad, const Tensor& positions, const Tensor& inv_freq) override {
    cpu::rope_backward(pool_, grad, positions, inv_freq);
  }
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& /*out*/,
                          const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) override {
    cpu::attention_backward(pool_, q, k, v, d_out, dq, dk, dv);
  }
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& ds, Tensor& d_gate,
                       Tensor& d_up) override {
    cpu::swiglu_backward(pool_, gate, up, ds, d_gate, d_up);
  }
  void linear_backward_input(const Tensor& dy, const LinearWeight& w, Tensor& dx,
                             bool accumulate) override {
    cpu::linear_backward_input(pool_, dy, w, dx, accumulate);
  }
  void matmul_tn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override {
    cpu::matmul_tn(pool_, a, b, c, u);
  }
  void matmul_nn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override {
    cpu::matmul_nn(pool_, a, b, c, u);
  }
  void matmul_nt(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override {
    cpu::matmul_nt(pool_, a, b, c, u);
  }
  void scale(const Tensor& x, float s, Tensor& out) override { cpu::scale(x, s, out); }
  void multiply(const Tensor& x, const Tensor& y, Tensor& out) override {
    cpu::multiply(x, y, out);
  }
  void zero(Tensor& x) override { cpu::zero(x); }
  void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask) override {
    cpu::dropout_mask(base, threshold, keep_scale, mask);
  }
  void cross_entropy(Tensor& logits, const Tensor& targets, double normalizer,
                     Tensor& losses) override {
    cpu::cross_entropy(pool_, logits, targets, normalizer, losses);
  }
  double sum_of_squares(std::span<const Tensor> xs) override { return cpu::sum_of_squares(xs); }
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWUpdate& update) override {
    cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, update);
  }
  void synchronize() override {}

 private:
  ThreadPool pool_;
  cpu::Isa isa_;
  DType kv_dtype_;
  cpu::KernelTable kernels_;
  cpu::LinearScratch scratch_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads, cpu::Isa isa,
                                          std::optional<DType> kv_dtype) {
  return std::make_unique<CpuBackend>(n_threads, isa, kv_dtype);
}

std::unique_ptr<Backend> make_cpu_backend(int n_threads) {
  return make_cpu_backend(n_threads, cpu::best_isa());
}

}  // namespace llamaq
