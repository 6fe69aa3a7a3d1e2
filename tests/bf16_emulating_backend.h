// Test support: the CPU backend with the CUDA backend's bf16 roundings added, to measure on the
// CPU what error those roundings cause (tests/golden/train_bf16_emulation_test.cpp) and to derive
// the GPU tests' bounds from it (tests/gpu/train_model_test.cpp). What the CUDA backend rounds:
// - base-weight GEMMs (bf16 or NF4 weights through cuBLAS: more than 8 tokens, or NF4): the f32
//   input x of the forward linear and dy of linear_backward_input rounded to bf16. LoRA weights
//   are f32: no rounding.
// - the tensor-core flash attention forward (attention_flash_mma.cu, head dims 64 and 128, more
//   than 4 queries): Q, K and V rounded to bf16, fp32 scores, max and sums, the probabilities
//   rounded to bf16 for P V. The row max is the whole row's here; the kernel's is per 64-key tile
//   with rescaling, which rounds the same for sequences of up to 64 tokens (the fixtures' 48).
// - the tensor-core attention backward (head dims 64 and 128): Q, K, V and dO rounded to bf16
//   (the kernel also rounds P and dS for its products; not modelled here).
// Everything else is fp32 on both.
#pragma once

#include <cmath>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "core/dtype.h"

namespace llamaq::test {

inline float round_bf16(float x) {
  return bf16_to_float(float_to_bf16(x));
}

inline Tensor rounded(const Tensor& x) {  // [...] f32 -> the same values rounded to bf16, f32
  Tensor out = Tensor::zeros(DType::F32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i)
    out.data_as<float>()[i] = round_bf16(x.data_as<const float>()[i]);
  return out;
}

inline bool bf16_gemm(const LinearWeight& w) {
  return w.quantized() || w.weight.dtype() == DType::BF16 || w.weight.dtype() == DType::F16;
}

struct Bf16Rounding {
  bool gemm_inputs = false;  // base-weight GEMM inputs (x forward, dy backward)
  bool attention = false;  // the tensor-core flash attention forward's arithmetic, backward inputs
  bool values = true;      // false: that arithmetic without the rounding (checks the emulation)
};

// The CPU backend with the GPU's bf16 roundings (above) where `rounding` asks for them.
class Bf16EmulatingBackend : public Backend {
 public:
  explicit Bf16EmulatingBackend(Bf16Rounding rounding)
      : inner_(make_cpu_backend(2, cpu::Isa::Reference)), rounding_(rounding) {}

  std::string_view name() const override { return "cpu-bf16-emulation"; }
  Device device() const override { return Device::Cpu; }
  DType preferred_kv_dtype() const override { return DType::F32; }  // as the CUDA backend
  Tensor alloc(DType dtype, Shape shape) override { return inner_->alloc(dtype, shape); }
  Tensor upload(const Tensor& host) override { return inner_->upload(host); }
  void copy_from_host(Tensor& dst, const void* src) override { inner_->copy_from_host(dst, src); }
  void copy_to_host(const Tensor& src, void* dst) override { inner_->copy_to_host(src, dst); }
  LinearWeight upload_linear(const LinearWeight& host) override {
    return inner_->upload_linear(host);
  }
  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override {
    inner_->embedding(table, ids, out);
  }
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    inner_->rmsnorm(x, weight, eps, out);
  }
  // For one token the GPU's dense GEMV uses the f32 input as it is (dense_gemv.cu); the NF4
  // path is treated like cuBLAS (its GEMV is for decode, which training does not do).
  void linear(const Tensor& x, const LinearWeight& w, Tensor& out) override {
    const bool round = rounding_.gemm_inputs && bf16_gemm(w) && (w.quantized() || x.dim(0) > 1);
    inner_->linear(round ? rounded(x) : x, w, out);
  }
  void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) override {
    inner_->rope(x, positions, inv_freq);
  }
  void kv_store(const Tensor& k, const Tensor& v, const Tensor& positions,
                const KvLayerView& kv) override {
    inner_->kv_store(k, v, positions, kv);
  }
  void attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                 Tensor& out) override {
    const int64_t head_dim = q.dim(2);  // attention.cu: the MMA kernel for these, prefill only
    if (rounding_.attention && (head_dim == 64 || head_dim == 128) && q.dim(0) > 4) {
      tensor_core_attention(q, positions, kv, out);
    } else {
      inner_->attention(q, positions, kv, out);
    }
  }
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    inner_->swiglu(gate, up, out);
  }
  void add_inplace(Tensor& x, const Tensor& y) override { inner_->add_inplace(x, y); }
  void argmax(const Tensor& logits, Tensor& ids) override { inner_->argmax(logits, ids); }
  void rmsnorm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                        Tensor& dx) override {
    inner_->rmsnorm_backward(x, weight, eps, dy, dx);
  }
  void rope_backward(Tensor& grad, const Tensor& positions, const Tensor& inv_freq) override {
    inner_->rope_backward(grad, positions, inv_freq);
  }
  // The tensor-core backward (backward_attention_mma.cu) for head dims 64 and 128: its bf16
  // inputs (its rounding of P and dS is not modelled).
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv) override {
    const int64_t head_dim = q.dim(2);
    if (rounding_.attention && rounding_.values && (head_dim == 64 || head_dim == 128)) {
      inner_->attention_backward(rounded(q), rounded(k), rounded(v), out, rounded(d_out), dq, dk,
                                 dv);
    } else {
      inner_->attention_backward(q, k, v, out, d_out, dq, dk, dv);
    }
  }
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& ds, Tensor& d_gate,
                       Tensor& d_up) override {
    inner_->swiglu_backward(gate, up, ds, d_gate, d_up);
  }
  void linear_backward_input(const Tensor& dy, const LinearWeight& w, Tensor& dx,
                             bool accumulate) override {
    const bool round = rounding_.gemm_inputs && bf16_gemm(w);
    inner_->linear_backward_input(round ? rounded(dy) : dy, w, dx, accumulate);
  }
  void matmul_tn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override {
    inner_->matmul_tn(a, b, c, u);
  }
  void matmul_nn(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override {
    inner_->matmul_nn(a, b, c, u);
  }
  void matmul_nt(const Tensor& a, const Tensor& b, Tensor& c, const GemmUpdate& u) override {
    inner_->matmul_nt(a, b, c, u);
  }
  void scale(const Tensor& x, float s, Tensor& out) override { inner_->scale(x, s, out); }
  void multiply(const Tensor& x, const Tensor& y, Tensor& out) override {
    inner_->multiply(x, y, out);
  }
  void zero(Tensor& x) override { inner_->zero(x); }
  void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask) override {
    inner_->dropout_mask(base, threshold, keep_scale, mask);
  }
  void cross_entropy(Tensor& logits, const Tensor& targets, double normalizer,
                     Tensor& losses) override {
    inner_->cross_entropy(logits, targets, normalizer, losses);
  }
  double sum_of_squares(std::span<const Tensor> xs) override { return inner_->sum_of_squares(xs); }
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWUpdate& update) override {
    inner_->adamw_step(param, grad, exp_avg, exp_avg_sq, update);
  }
  void synchronize() override {}

 private:
  // The flash MMA kernel's arithmetic for f32 K/V blocks: bf16 Q, K, V; fp32 scores, max and
  // sum; bf16 probabilities in P V; fp32 accumulation. [n, H, D] q, [n, H * D] out.
  float bf16(float x) const { return rounding_.values ? round_bf16(x) : x; }

  void tensor_core_attention(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                             Tensor& out) {
    const int64_t n = q.dim(0), heads = q.dim(1), head_dim = q.dim(2);
    const int64_t kv_heads = kv.k_blocks.dim(2), group = heads / kv_heads;
    const float scale = float(1.0 / std::sqrt(double(head_dim)));
    const int32_t* pos = positions.data_as<const int32_t>();
    const int32_t* table = kv.block_table.data_as<const int32_t>();
    const auto row = [&](const Tensor& blocks, int64_t t, int64_t h) {
      const int64_t block = table[t / kv.block_size], slot = t % kv.block_size;
      return blocks.data_as<const float>() +
             ((block * kv.block_size + slot) * kv_heads + h) * head_dim;
    };
    std::vector<float> p;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const float* qi = q.data_as<const float>() + (i * heads + h) * head_dim;
        const int64_t keys = pos[i] + 1;
        p.assign(size_t(keys), 0.0f);
        float max_score = -INFINITY;
        for (int64_t t = 0; t < keys; ++t) {
          const float* kt = row(kv.k_blocks, t, h / group);
          float s = 0;
          for (int64_t c = 0; c < head_dim; ++c)
            s += bf16(qi[c]) * bf16(kt[c]);
          p[size_t(t)] = s * scale;
          max_score = std::max(max_score, p[size_t(t)]);
        }
        float sum = 0;
        for (float& x : p) {
          x = std::exp(x - max_score);
          sum += x;
        }
        float* o = out.data_as<float>() + (i * heads + h) * head_dim;
        for (int64_t c = 0; c < head_dim; ++c) {
          float acc = 0;
          for (int64_t t = 0; t < keys; ++t)
            acc += bf16(p[size_t(t)]) * bf16(row(kv.v_blocks, t, h / group)[c]);
          o[c] = acc / sum;
        }
      }
    }
  }

  std::unique_ptr<Backend> inner_;
  Bf16Rounding rounding_;
};

}  // namespace llamaq::test
