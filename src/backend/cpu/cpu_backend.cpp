#include "backend/cpu/cpu_backend.h"

#include <cstring>

#include "backend/cpu/attention_tiled.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/fast_linear.h"
#include "core/error.h"

namespace llamaq {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int n_threads, cpu::Isa isa) : pool_(n_threads), isa_(isa) {
    if (!cpu::isa_supported(isa))
      fail("cpu backend: this CPU does not support {}", cpu::isa_name(isa));
    if (isa != cpu::Isa::Reference) kernels_ = cpu::kernels_for(isa);
  }

  std::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::Cpu; }
  DType preferred_kv_dtype() const override {
    return isa_ == cpu::Isa::Reference ? DType::F32 : DType::BF16;
  }

  Tensor alloc(DType dtype, Shape shape) override { return Tensor::zeros(dtype, std::move(shape)); }
  Tensor upload(const Tensor& host) override { return host; }
  LinearWeight upload_linear(const LinearWeight& host) override { return host; }
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
      cpu::attention_tiled(pool_, q, positions, kv, out);
    }
  }
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    cpu::swiglu(pool_, gate, up, out);
  }
  void add_inplace(Tensor& x, const Tensor& y) override { cpu::add_inplace(pool_, x, y); }

 private:
  ThreadPool pool_;
  cpu::Isa isa_;
  cpu::KernelTable kernels_;
  cpu::LinearScratch scratch_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads, cpu::Isa isa) {
  return std::make_unique<CpuBackend>(n_threads, isa);
}

std::unique_ptr<Backend> make_cpu_backend(int n_threads) {
  return make_cpu_backend(n_threads, cpu::best_isa());
}

}  // namespace llamaq
