#include "train/lora_model.h"

#include <array>
#include <cmath>
#include <random>

#include "backend/cpu/backward.h"
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "model/rope.h"

namespace llamaq {
namespace {

enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kProjCount };
constexpr const char* kProjNames[kProjCount] = {"self_attn.q_proj", "self_attn.k_proj",
                                                "self_attn.v_proj", "self_attn.o_proj",
                                                "mlp.gate_proj",    "mlp.up_proj",
                                                "mlp.down_proj"};

const LinearWeight& projection(const LayerWeights& w, int p) {
  const LinearWeight* all[kProjCount] = {&w.q_proj,    &w.k_proj,  &w.v_proj,   &w.o_proj,
                                         &w.gate_proj, &w.up_proj, &w.down_proj};
  return *all[p];
}

Tensor f32(Shape shape) { return Tensor::zeros(DType::F32, std::move(shape)); }

void add_into(Tensor& x, const Tensor& y) {
  float* a = x.data_as<float>();
  const float* b = y.data_as<const float>();
  for (int64_t i = 0; i < x.numel(); ++i) a[i] += b[i];
}

void scale_into(Tensor& x, float s) {
  float* a = x.data_as<float>();
  for (int64_t i = 0; i < x.numel(); ++i) a[i] *= s;
}

double log_sum_exp(const float* row, int64_t n) {
  const float max = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(row[i]) - max);
  return double(max) + std::log(sum);
}

}  // namespace

struct LoraTrainModel::Layer {
  const LayerWeights* weights = nullptr;
  std::array<int, kProjCount> lora{-1, -1, -1, -1, -1, -1, -1};  // index into params_, or -1
};

// One layer's activations, recomputed from its input inside backward.
struct LoraTrainModel::Cache {
  Tensor a, q, k, v, attn, h, m, gate, up, s;
  std::array<Tensor, kProjCount> low_rank;  // x A^T of each projection with an adapter
  std::array<Tensor, kProjCount> mask;      // its LoRA dropout mask (empty without dropout)
};

LoraTrainModel::LoraTrainModel(LlamaConfig config, LlamaWeights base, int threads)
    : config_(std::move(config)), base_(std::move(base)), pool_(threads) {
  for (const LayerWeights& w : base_.layers) layers_.push_back(Layer{&w, {}});
  for (Layer& l : layers_) l.lora.fill(-1);
  const std::vector<float> inv_freq = rope_inv_freq(config_);
  inv_freq_ = f32({int64_t(inv_freq.size())});
  std::copy(inv_freq.begin(), inv_freq.end(), inv_freq_.data_as<float>());
}

LoraTrainModel::~LoraTrainModel() = default;

void LoraTrainModel::init_lora(const LoraConfig& config, uint64_t seed) {
  lora_config_ = config;
  params_.clear();
  std::mt19937_64 rng(seed);
  for (size_t l = 0; l < layers_.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kProjNames[p];
      if (!config.targets(module)) continue;
      const LinearWeight& w = projection(*layers_[l].weights, p);
      const int64_t r = config.rank_for(module);
      LoraParam param{module, f32({r, w.in_features()}), f32({w.out_features(), r}),
                      f32({r, w.in_features()}), f32({w.out_features(), r}),
                      float(config.scaling_for(module))};
      // PEFT: kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(in), 1/sqrt(in)); B starts at zero.
      const double bound = 1.0 / std::sqrt(double(w.in_features()));
      for (int64_t i = 0; i < param.a.numel(); ++i) {
        const double u = double(rng() >> 11) * 0x1.0p-53;
        param.a.data_as<float>()[i] = float((2 * u - 1) * bound);
      }
      layers_[l].lora[size_t(p)] = int(params_.size());
      params_.push_back(std::move(param));
    }
  }
  if (params_.empty()) fail("LoRA: the target modules match no projection of this model");
}

void LoraTrainModel::load_lora(const PeftAdapter& adapter) {
  lora_config_ = adapter.config;
  params_.clear();
  const std::string file = (adapter.dir / "adapter_model.safetensors").string();
  for (size_t l = 0; l < layers_.size(); ++l) {
    for (int p = 0; p < kProjCount; ++p) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kProjNames[p];
      const auto it = adapter.modules.find(module);
      if (it == adapter.modules.end()) continue;
      const LinearWeight& w = projection(*layers_[l].weights, p);
      const LoraTensors& t = it->second;
      if (t.a.dim(1) != w.in_features() || t.b.dim(0) != w.out_features()) {
        fail("{}: `{}` does not fit the [{}, {}] projection", file, module, w.out_features(),
             w.in_features());
      }
      LoraParam param{module, f32(t.a.shape()), f32(t.b.shape()), f32(t.a.shape()),
                      f32(t.b.shape()), float(adapter.config.scaling_for(module))};
      std::copy_n(t.a.data_as<const float>(), t.a.numel(), param.a.data_as<float>());
      std::copy_n(t.b.data_as<const float>(), t.b.numel(), param.b.data_as<float>());
      layers_[l].lora[size_t(p)] = int(params_.size());
      params_.push_back(std::move(param));
    }
  }
  if (params_.size() != adapter.modules.size()) {
    fail("{}: some adapter modules are not projections of this model", file);
  }
}

std::map<std::string, LoraTensors> LoraTrainModel::lora_tensors() const {
  std::map<std::string, LoraTensors> out;
  for (const LoraParam& p : params_) out[p.module] = {p.a, p.b};
  return out;
}

void LoraTrainModel::zero_grad() {
  for (LoraParam& p : params_) {
    std::fill_n(p.grad_a.data_as<float>(), p.grad_a.numel(), 0.0f);
    std::fill_n(p.grad_b.data_as<float>(), p.grad_b.numel(), 0.0f);
  }
}

namespace {

// The pieces one pass needs, gathered so the layer functions stay short.
struct Pass {
  ThreadPool& pool;
  const LlamaConfig& c;
  std::vector<LoraParam>& params;
  const Tensor& positions;  // [n] i32, 0..n-1
  const Tensor& inv_freq;
  float dropout = 0;         // LoRA dropout probability (training passes only)
  uint64_t dropout_key = 0;  // with the layer and projection, decides the mask
  int layer = 0;
};

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Inverted dropout on the LoRA input (PEFT's nn.Dropout): each element kept with probability
// 1 - p and scaled by 1 / (1 - p). The mask is a hash of (key, layer, projection, element), so the
// recomputation inside backward draws exactly the same mask. [n, in] f32 of 0 or 1/(1-p).
Tensor dropout_mask(const Pass& s, int projection, Shape shape) {
  Tensor mask = f32(std::move(shape));
  const uint64_t base = mix64(s.dropout_key ^ mix64(uint64_t(s.layer) * 16 + uint64_t(projection) + 1));
  const double keep = 1.0 - s.dropout;
  const uint64_t threshold = uint64_t(keep * 18446744073709551615.0);
  const float scale = float(1.0 / keep);
  float* m = mask.data_as<float>();
  for (int64_t i = 0; i < mask.numel(); ++i) m[i] = mix64(base + uint64_t(i)) < threshold ? scale : 0.0f;
  return mask;
}

Tensor multiplied(const Tensor& x, const Tensor& mask) {
  Tensor out = f32(x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) {
    out.data_as<float>()[i] = x.data_as<const float>()[i] * mask.data_as<const float>()[i];
  }
  return out;
}

// y = x W^T + scale (dropout(x) A^T) B^T; keeps dropout(x) A^T and the mask for backward.
void projection_forward(Pass& s, const LinearWeight& w, int lora, int projection, const Tensor& x,
                        Tensor& y, Tensor& low_rank, Tensor& mask) {
  cpu::linear(s.pool, x, w, y);
  if (lora < 0) return;
  const LoraParam& p = s.params[size_t(lora)];
  low_rank = f32({x.dim(0), p.a.dim(0)});
  if (s.dropout > 0) mask = dropout_mask(s, projection, x.shape());
  cpu::linear(s.pool, s.dropout > 0 ? multiplied(x, mask) : x, LinearWeight::dense(p.a), low_rank);
  Tensor delta = f32({x.dim(0), p.b.dim(0)});
  cpu::linear(s.pool, low_rank, LinearWeight::dense(p.b), delta);
  scale_into(delta, p.scale);
  Tensor y2 = y.reshaped({x.dim(0), p.b.dim(0)});
  add_into(y2, delta);
}

// dx = dy W + mask * (scale (dy B) A); dB += scale dy^T t; dA += scale (dy B)^T (mask * x),
// with t = (mask * x) A^T (mask = 1 without dropout).
Tensor projection_backward(Pass& s, const LinearWeight& w, int lora, const Tensor& x,
                           const Tensor& low_rank, const Tensor& mask, const Tensor& dy) {
  const int64_t n = dy.dim(0);
  Tensor dx = f32({n, w.in_features()});
  cpu::linear_backward_input(s.pool, dy, w, dx);
  if (lora < 0) return dx;
  LoraParam& p = s.params[size_t(lora)];
  Tensor scaled_dy = f32(dy.shape());
  std::copy_n(dy.data_as<const float>(), dy.numel(), scaled_dy.data_as<float>());
  scale_into(scaled_dy, p.scale);
  cpu::matmul_tn(s.pool, scaled_dy, low_rank, p.grad_b, /*accumulate=*/true);
  Tensor d_low = f32({n, p.b.dim(1)});
  cpu::matmul_nn(s.pool, scaled_dy, p.b, d_low);
  const bool dropped = !mask.empty();
  cpu::matmul_tn(s.pool, d_low, dropped ? multiplied(x, mask) : x, p.grad_a, /*accumulate=*/true);
  Tensor dx_lora = f32({n, w.in_features()});
  cpu::matmul_nn(s.pool, d_low, p.a, dx_lora);
  add_into(dx, dropped ? multiplied(dx_lora, mask) : dx_lora);
  return dx;
}

// Causal attention over this sequence's own keys, through the paged-cache op with blocks of 1.
void self_attention(Pass& s, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out) {
  const int64_t n = q.dim(0);
  Tensor table = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i) table.data_as<int32_t>()[i] = int32_t(i);
  const KvLayerView kv{k.reshaped({n, 1, k.dim(1), k.dim(2)}), v.reshaped({n, 1, v.dim(1), v.dim(2)}),
                       table, 1};
  cpu::attention(s.pool, q, s.positions, kv, out);
}


// One decoder layer forward: y = layer(x), with what backward needs in `c`.
void layer_forward(Pass& s, const LayerWeights& w, const std::array<int, kProjCount>& lora,
                   const Tensor& x, LoraTrainModel::Cache& c, Tensor& y) {
  const LlamaConfig& cfg = s.c;
  const int64_t n = x.dim(0);
  const float eps = float(cfg.rms_norm_eps);
  c.a = f32({n, cfg.hidden_size});
  cpu::rmsnorm(s.pool, x, w.input_norm, eps, c.a);
  c.q = f32({n, cfg.num_attention_heads, cfg.head_dim});
  c.k = f32({n, cfg.num_key_value_heads, cfg.head_dim});
  c.v = f32({n, cfg.num_key_value_heads, cfg.head_dim});
  Tensor q2 = c.q.reshaped({n, cfg.q_dim()}), k2 = c.k.reshaped({n, cfg.kv_dim()}),
         v2 = c.v.reshaped({n, cfg.kv_dim()});
  projection_forward(s, w.q_proj, lora[kQ], kQ, c.a, q2, c.low_rank[kQ], c.mask[kQ]);
  projection_forward(s, w.k_proj, lora[kK], kK, c.a, k2, c.low_rank[kK], c.mask[kK]);
  projection_forward(s, w.v_proj, lora[kV], kV, c.a, v2, c.low_rank[kV], c.mask[kV]);
  cpu::rope(s.pool, c.q, s.positions, s.inv_freq);
  cpu::rope(s.pool, c.k, s.positions, s.inv_freq);
  c.attn = f32({n, cfg.q_dim()});
  self_attention(s, c.q, c.k, c.v, c.attn);
  c.h = f32({n, cfg.hidden_size});
  projection_forward(s, w.o_proj, lora[kO], kO, c.attn, c.h, c.low_rank[kO], c.mask[kO]);
  add_into(c.h, x);
  c.m = f32({n, cfg.hidden_size});
  cpu::rmsnorm(s.pool, c.h, w.post_attention_norm, eps, c.m);
  c.gate = f32({n, cfg.intermediate_size});
  c.up = f32({n, cfg.intermediate_size});
  projection_forward(s, w.gate_proj, lora[kGate], kGate, c.m, c.gate, c.low_rank[kGate], c.mask[kGate]);
  projection_forward(s, w.up_proj, lora[kUp], kUp, c.m, c.up, c.low_rank[kUp], c.mask[kUp]);
  c.s = f32({n, cfg.intermediate_size});
  cpu::swiglu(s.pool, c.gate, c.up, c.s);
  projection_forward(s, w.down_proj, lora[kDown], kDown, c.s, y, c.low_rank[kDown], c.mask[kDown]);
  add_into(y, c.h);
}

// dx from dy for one layer (recomputed activations in `c`); LoRA gradients accumulate.
Tensor layer_backward(Pass& s, const LayerWeights& w, const std::array<int, kProjCount>& lora,
                      const Tensor& x, const LoraTrainModel::Cache& c, const Tensor& dy) {
  const LlamaConfig& cfg = s.c;
  const int64_t n = x.dim(0);
  const float eps = float(cfg.rms_norm_eps);
  Tensor ds = projection_backward(s, w.down_proj, lora[kDown], c.s, c.low_rank[kDown], c.mask[kDown], dy);
  Tensor d_gate = f32(c.gate.shape()), d_up = f32(c.up.shape());
  cpu::swiglu_backward(s.pool, c.gate, c.up, ds, d_gate, d_up);
  Tensor dm = projection_backward(s, w.gate_proj, lora[kGate], c.m, c.low_rank[kGate], c.mask[kGate], d_gate);
  add_into(dm, projection_backward(s, w.up_proj, lora[kUp], c.m, c.low_rank[kUp], c.mask[kUp], d_up));
  Tensor dh = f32({n, cfg.hidden_size});
  cpu::rmsnorm_backward(s.pool, c.h, w.post_attention_norm, eps, dm, dh);
  add_into(dh, dy);
  Tensor d_attn = projection_backward(s, w.o_proj, lora[kO], c.attn, c.low_rank[kO], c.mask[kO], dh);
  Tensor dq = f32(c.q.shape()), dk = f32(c.k.shape()), dv = f32(c.v.shape());
  cpu::attention_backward(s.pool, c.q, c.k, c.v, d_attn, dq, dk, dv);
  cpu::rope_backward(s.pool, dq, s.positions, s.inv_freq);
  cpu::rope_backward(s.pool, dk, s.positions, s.inv_freq);
  Tensor da = projection_backward(s, w.q_proj, lora[kQ], c.a, c.low_rank[kQ], c.mask[kQ],
                                  dq.reshaped({n, cfg.q_dim()}));
  add_into(da, projection_backward(s, w.k_proj, lora[kK], c.a, c.low_rank[kK], c.mask[kK],
                                   dk.reshaped({n, cfg.kv_dim()})));
  add_into(da, projection_backward(s, w.v_proj, lora[kV], c.a, c.low_rank[kV], c.mask[kV],
                                   dv.reshaped({n, cfg.kv_dim()})));
  Tensor dx = f32({n, cfg.hidden_size});
  cpu::rmsnorm_backward(s.pool, x, w.input_norm, eps, da, dx);
  add_into(dx, dh);
  return dx;
}

}  // namespace

// Final norm, LM head and cross-entropy in chunks of rows: [chunk, vocab] logits at a time.
// Returns sum(CE); with `dx` set, writes d(sum(CE) / normalizer)/d(x).
double LoraTrainModel::head(const Tensor& x, std::span<const int32_t> labels, double normalizer,
                            Tensor* dx, std::vector<float>* logits_out) {
  const int64_t n = x.dim(0), d = config_.hidden_size, vocab = config_.vocab_size;
  const float eps = float(config_.rms_norm_eps);
  Tensor normed = f32({n, d});
  cpu::rmsnorm(pool_, x, base_.final_norm, eps, normed);
  Tensor d_normed = f32({n, d});
  if (logits_out) logits_out->assign(size_t(n * vocab), 0.0f);
  constexpr int64_t kChunk = 64;
  double loss = 0;
  for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
    const int64_t rows = std::min(kChunk, n - r0);
    Tensor logits = f32({rows, vocab});
    cpu::linear(pool_, normed.slice_rows(r0, rows), base_.lm_head, logits);
    float* lg = logits.data_as<float>();
    if (logits_out) std::copy_n(lg, rows * vocab, logits_out->begin() + r0 * vocab);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t t = r0 + i;
      const int32_t target = t + 1 < n ? labels[size_t(t + 1)] : kIgnoreLabel;
      float* row = lg + i * vocab;
      if (target == kIgnoreLabel) {
        std::fill_n(row, vocab, 0.0f);
        continue;
      }
      if (target < 0 || target >= vocab) fail("label {} is out of range for a vocabulary of {}", target, vocab);
      const double lse = log_sum_exp(row, vocab);
      loss += lse - double(row[target]);
      for (int64_t j = 0; j < vocab; ++j) row[j] = float(std::exp(double(row[j]) - lse) / normalizer);
      row[target] -= float(1.0 / normalizer);
    }
    if (dx) {
      Tensor part = d_normed.slice_rows(r0, rows);
      cpu::linear_backward_input(pool_, logits, base_.lm_head, part);
    }
  }
  if (dx) cpu::rmsnorm_backward(pool_, x, base_.final_norm, eps, d_normed, *dx);
  return loss;
}

double LoraTrainModel::run(std::span<const int32_t> ids, std::span<const int32_t> labels,
                           double normalizer, bool backward, std::vector<float>* logits_out) {
  const int64_t n = int64_t(ids.size());
  if (n == 0) fail("training: empty sequence");
  if (!labels.empty() && labels.size() != ids.size()) fail("training: labels and ids differ in length");
  Tensor positions = Tensor::zeros(DType::I32, {n});
  Tensor token_ids = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i) {
    positions.data_as<int32_t>()[i] = int32_t(i);
    token_ids.data_as<int32_t>()[i] = ids[size_t(i)];
  }
  Pass pass{pool_, config_, params_, positions, inv_freq_};
  if (backward) {
    pass.dropout = float(lora_config_.lora_dropout);
    pass.dropout_key = dropout_key_;
  }
  // Activation checkpointing: keep only each layer's input.
  std::vector<Tensor> inputs(layers_.size() + 1);
  inputs[0] = f32({n, config_.hidden_size});
  cpu::embedding(pool_, base_.embed_tokens, token_ids, inputs[0]);
  for (size_t l = 0; l < layers_.size(); ++l) {
    Cache cache;
    pass.layer = int(l);
    inputs[l + 1] = f32({n, config_.hidden_size});
    layer_forward(pass, *layers_[l].weights, layers_[l].lora, inputs[l], cache, inputs[l + 1]);
  }
  std::vector<int32_t> no_labels;
  if (labels.empty()) no_labels.assign(size_t(n), kIgnoreLabel);
  const auto targets = labels.empty() ? std::span<const int32_t>(no_labels) : labels;
  Tensor dx = f32({n, config_.hidden_size});
  const double loss = head(inputs.back(), targets, normalizer, backward ? &dx : nullptr, logits_out);
  if (!backward) return loss;
  for (size_t l = layers_.size(); l-- > 0;) {
    Cache cache;
    pass.layer = int(l);
    Tensor recomputed = f32({n, config_.hidden_size});
    layer_forward(pass, *layers_[l].weights, layers_[l].lora, inputs[l], cache, recomputed);
    dx = layer_backward(pass, *layers_[l].weights, layers_[l].lora, inputs[l], cache, dx);
  }
  return loss;
}

double LoraTrainModel::accumulate_gradients(std::span<const int32_t> ids,
                                            std::span<const int32_t> labels, double normalizer) {
  if (!(normalizer > 0)) fail("training: the loss normalizer must be > 0");
  return run(ids, labels, normalizer, /*backward=*/true, nullptr);
}

double LoraTrainModel::loss_sum(std::span<const int32_t> ids, std::span<const int32_t> labels) {
  return run(ids, labels, 1.0, /*backward=*/false, nullptr);
}

std::vector<float> LoraTrainModel::logits(std::span<const int32_t> ids) {
  std::vector<float> out;
  run(ids, {}, 1.0, /*backward=*/false, &out);
  return out;
}

}  // namespace llamaq
