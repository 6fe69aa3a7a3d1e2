#include "train/lora_model.h"

#include <array>
#include <cmath>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "backend/mix64.h"
#include "core/error.h"
#include "model/llama_model.h"
#include "model/rope.h"

namespace llamaq {
namespace {

enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kProjCount };
constexpr const char* kProjNames[kProjCount] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

LinearWeight& projection(LayerWeights& w, int p) {
  LinearWeight* all[kProjCount] = {&w.q_proj,    &w.k_proj,  &w.v_proj,   &w.o_proj,
                                   &w.gate_proj, &w.up_proj, &w.down_proj};
  return *all[p];
}

const LinearWeight& projection(const LayerWeights& w, int p) {
  return projection(const_cast<LayerWeights&>(w), p);
}

Tensor host_f32(Shape shape) {
  return Tensor::zeros(DType::F32, std::move(shape));
}

// The frozen base on the backend (host tensors as they are on the CPU). A LoRA branch of a loaded
// adapter is not part of the trainable model and is not uploaded.
LlamaWeights upload_base(Backend& b, const LlamaWeights& host) {
  return upload_weights(b, host, LoraBranches::Drop);
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
    // The fp32 reference path: the forward must be what the backward differentiates (the fast CPU
    // path quantizes activations to int8 for NF4 weights).
    : owned_backend_(make_cpu_backend(threads, cpu::Isa::Reference)),
      backend_(*owned_backend_),
      config_(std::move(config)),
      base_(upload_base(backend_, base)) {
  init_layers();
}

LoraTrainModel::LoraTrainModel(LlamaConfig config, const LlamaWeights& base, Backend& backend)
    : backend_(backend), config_(std::move(config)), base_(upload_base(backend_, base)) {
  init_layers();
}

LoraTrainModel::~LoraTrainModel() = default;

void LoraTrainModel::init_layers() {
  for (const LayerWeights& w : base_.layers)
    layers_.push_back(Layer{&w, {}});
  for (Layer& l : layers_)
    l.lora.fill(-1);
  const std::vector<float> inv_freq = rope_inv_freq(config_);
  inv_freq_ = backend_.alloc(DType::F32, {int64_t(inv_freq.size())});
  backend_.copy_from_host(inv_freq_, inv_freq.data());
}

void LoraTrainModel::add_param(size_t layer, int projection, std::string module,
                               const Tensor& host_a, const Tensor& host_b, float scale) {
  LoraParam param{std::move(module),
                  backend_.alloc(DType::F32, host_a.shape()),
                  backend_.alloc(DType::F32, host_b.shape()),
                  backend_.alloc(DType::F32, host_a.shape()),
                  backend_.alloc(DType::F32, host_b.shape()),
                  scale};
  backend_.copy_from_host(param.a, host_a.data());
  backend_.copy_from_host(param.b, host_b.data());
  layers_[layer].lora[size_t(projection)] = int(params_.size());
  params_.push_back(std::move(param));
}

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
      Tensor a = host_f32({r, w.in_features()});
      // PEFT: kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(in), 1/sqrt(in)); B starts at zero.
      const double bound = 1.0 / std::sqrt(double(w.in_features()));
      for (int64_t i = 0; i < a.numel(); ++i) {
        const double u = double(rng() >> 11) * 0x1.0p-53;
        a.data_as<float>()[i] = float((2 * u - 1) * bound);
      }
      add_param(l, p, module, a, host_f32({w.out_features(), r}),
                float(config.scaling_for(module)));
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
      Tensor a = host_f32(t.a.shape()), b = host_f32(t.b.shape());
      std::copy_n(t.a.data_as<const float>(), t.a.numel(), a.data_as<float>());
      std::copy_n(t.b.data_as<const float>(), t.b.numel(), b.data_as<float>());
      add_param(l, p, module, a, b, float(adapter.config.scaling_for(module)));
    }
  }
  if (params_.size() != adapter.modules.size()) {
    fail("{}: some adapter modules are not projections of this model", file);
  }
}

std::map<std::string, LoraTensors> LoraTrainModel::lora_tensors() const {
  std::map<std::string, LoraTensors> out;
  for (const LoraParam& p : params_) {
    Tensor a = host_f32(p.a.shape()), b = host_f32(p.b.shape());
    backend_.copy_to_host(p.a, a.data());
    backend_.copy_to_host(p.b, b.data());
    out[p.module] = {a, b};
  }
  return out;
}

void LoraTrainModel::zero_grad() {
  for (LoraParam& p : params_) {
    backend_.zero(p.grad_a);
    backend_.zero(p.grad_b);
  }
}

namespace {

// The pieces one pass needs, gathered so the layer functions stay short.
struct Pass {
  Backend& b;
  const LlamaConfig& c;
  std::vector<LoraParam>& params;
  const Tensor& positions;   // [n] i32 on the backend, 0..n-1
  const Tensor& inv_freq;    // [head_dim / 2] f32 on the backend
  float dropout = 0;         // LoRA dropout probability (training passes only)
  uint64_t dropout_key = 0;  // with the layer and projection, decides the mask
  int layer = 0;

  Tensor f32(Shape shape) const { return b.alloc(DType::F32, std::move(shape)); }
};

// Inverted dropout on the LoRA input (PEFT's nn.Dropout): each element kept with probability
// 1 - p and scaled by 1 / (1 - p). The mask is a hash of (key, layer, projection, element), so the
// recomputation inside backward draws exactly the same mask. [n, in] f32 of 0 or 1/(1-p).
Tensor dropout_mask(const Pass& s, int projection, Shape shape) {
  Tensor mask = s.f32(std::move(shape));
  const uint64_t base =
      mix64(s.dropout_key ^ mix64(uint64_t(s.layer) * 16 + uint64_t(projection) + 1));
  const double keep = 1.0 - s.dropout;
  const uint64_t threshold = uint64_t(keep * 18446744073709551615.0);
  s.b.dropout_mask(base, threshold, float(1.0 / keep), mask);
  return mask;
}

Tensor multiplied(const Pass& s, const Tensor& x, const Tensor& mask) {
  Tensor out = s.f32(x.shape());
  s.b.multiply(x, mask, out);
  return out;
}

// What backward needs of a projection's LoRA branch: t = dropout(x) A^T and the dropout mask.
void lora_low_rank(Pass& s, int lora, int projection, const Tensor& x, Tensor& low_rank,
                   Tensor& mask) {
  const LoraParam& p = s.params[size_t(lora)];
  low_rank = s.f32({x.dim(0), p.a.dim(0)});
  if (s.dropout > 0) mask = dropout_mask(s, projection, x.shape());
  s.b.matmul_nt(s.dropout > 0 ? multiplied(s, x, mask) : x, p.a, low_rank, {});
}

// y = x W^T + scale (dropout(x) A^T) B^T; keeps dropout(x) A^T and the mask for backward. The
// scaled LoRA product is added by its GEMM (alpha = scale, beta = 1).
void projection_forward(Pass& s, const LinearWeight& w, int lora, int projection, const Tensor& x,
                        Tensor& y, Tensor& low_rank, Tensor& mask) {
  s.b.linear(x, w, y);
  if (lora < 0) return;
  lora_low_rank(s, lora, projection, x, low_rank, mask);
  const LoraParam& p = s.params[size_t(lora)];
  Tensor y2 = y.reshaped({x.dim(0), p.b.dim(0)});
  s.b.matmul_nt(low_rank, p.b, y2, {p.scale, /*accumulate=*/true});
}

// dx (+)= dy W + mask * (scale (dy B) A); dB += scale dy^T t; dA += (scale dy B)^T (mask * x),
// with t = (mask * x) A^T (mask = 1 without dropout). `accumulate` adds to dx (the projections
// that share an input) instead of overwriting it.
void projection_backward(Pass& s, const LinearWeight& w, int lora, const Tensor& x,
                         const Tensor& low_rank, const Tensor& mask, const Tensor& dy, Tensor& dx,
                         bool accumulate) {
  const int64_t n = dy.dim(0);
  s.b.linear_backward_input(dy, w, dx, accumulate);
  if (lora < 0) return;
  LoraParam& p = s.params[size_t(lora)];
  s.b.matmul_tn(dy, low_rank, p.grad_b, {p.scale, /*accumulate=*/true});
  Tensor d_low = s.f32({n, p.b.dim(1)});  // scale dy B
  s.b.matmul_nn(dy, p.b, d_low, {p.scale, /*accumulate=*/false});
  const bool dropped = !mask.empty();
  s.b.matmul_tn(d_low, dropped ? multiplied(s, x, mask) : x, p.grad_a, {1.0f, true});
  if (!dropped) {
    s.b.matmul_nn(d_low, p.a, dx, {1.0f, /*accumulate=*/true});
    return;
  }
  Tensor dx_lora = s.f32({n, w.in_features()});
  s.b.matmul_nn(d_low, p.a, dx_lora, {});
  s.b.multiply(dx_lora, mask, dx_lora);
  s.b.add_inplace(dx, dx_lora);
}

// Causal attention over this sequence's own keys, through the paged-cache op with blocks of one
// token: the block table is 0..n-1, which is the positions tensor itself.
void self_attention(Pass& s, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out) {
  const int64_t n = q.dim(0);
  const KvLayerView kv{k.reshaped({n, 1, k.dim(1), k.dim(2)}),
                       v.reshaped({n, 1, v.dim(1), v.dim(2)}), s.positions, 1};
  s.b.attention(q, s.positions, kv, out);
}

// One decoder layer forward: *y = layer(x), with what backward needs in `c`. Without y (the
// recomputation inside backward, which has the layer's output already) the down projection and
// the residual after it are skipped: backward needs only the down projection's LoRA input.
void layer_forward(Pass& s, const LayerWeights& w, const std::array<int, kProjCount>& lora,
                   const Tensor& x, LoraTrainModel::Cache& c, Tensor* y) {
  const LlamaConfig& cfg = s.c;
  const int64_t n = x.dim(0);
  const float eps = float(cfg.rms_norm_eps);
  c.a = s.f32({n, cfg.hidden_size});
  s.b.rmsnorm(x, w.input_norm, eps, c.a);
  c.q = s.f32({n, cfg.num_attention_heads, cfg.head_dim});
  c.k = s.f32({n, cfg.num_key_value_heads, cfg.head_dim});
  c.v = s.f32({n, cfg.num_key_value_heads, cfg.head_dim});
  Tensor q2 = c.q.reshaped({n, cfg.q_dim()}), k2 = c.k.reshaped({n, cfg.kv_dim()}),
         v2 = c.v.reshaped({n, cfg.kv_dim()});
  projection_forward(s, w.q_proj, lora[kQ], kQ, c.a, q2, c.low_rank[kQ], c.mask[kQ]);
  projection_forward(s, w.k_proj, lora[kK], kK, c.a, k2, c.low_rank[kK], c.mask[kK]);
  projection_forward(s, w.v_proj, lora[kV], kV, c.a, v2, c.low_rank[kV], c.mask[kV]);
  s.b.rope(c.q, s.positions, s.inv_freq);
  s.b.rope(c.k, s.positions, s.inv_freq);
  c.attn = s.f32({n, cfg.q_dim()});
  self_attention(s, c.q, c.k, c.v, c.attn);
  c.h = s.f32({n, cfg.hidden_size});
  projection_forward(s, w.o_proj, lora[kO], kO, c.attn, c.h, c.low_rank[kO], c.mask[kO]);
  s.b.add_inplace(c.h, x);
  c.m = s.f32({n, cfg.hidden_size});
  s.b.rmsnorm(c.h, w.post_attention_norm, eps, c.m);
  c.gate = s.f32({n, cfg.intermediate_size});
  c.up = s.f32({n, cfg.intermediate_size});
  projection_forward(s, w.gate_proj, lora[kGate], kGate, c.m, c.gate, c.low_rank[kGate],
                     c.mask[kGate]);
  projection_forward(s, w.up_proj, lora[kUp], kUp, c.m, c.up, c.low_rank[kUp], c.mask[kUp]);
  c.s = s.f32({n, cfg.intermediate_size});
  s.b.swiglu(c.gate, c.up, c.s);
  if (y == nullptr) {
    if (lora[kDown] >= 0)
      lora_low_rank(s, lora[kDown], kDown, c.s, c.low_rank[kDown], c.mask[kDown]);
    return;
  }
  projection_forward(s, w.down_proj, lora[kDown], kDown, c.s, *y, c.low_rank[kDown], c.mask[kDown]);
  s.b.add_inplace(*y, c.h);
}

// dx from dy for one layer (recomputed activations in `c`); LoRA gradients accumulate.
Tensor layer_backward(Pass& s, const LayerWeights& w, const std::array<int, kProjCount>& lora,
                      const Tensor& x, const LoraTrainModel::Cache& c, const Tensor& dy) {
  const LlamaConfig& cfg = s.c;
  const int64_t n = x.dim(0);
  const float eps = float(cfg.rms_norm_eps);
  Tensor ds = s.f32(c.s.shape());
  projection_backward(s, w.down_proj, lora[kDown], c.s, c.low_rank[kDown], c.mask[kDown], dy, ds,
                      false);
  Tensor d_gate = s.f32(c.gate.shape()), d_up = s.f32(c.up.shape());
  s.b.swiglu_backward(c.gate, c.up, ds, d_gate, d_up);
  ds = Tensor();
  Tensor dm = s.f32({n, cfg.hidden_size});
  projection_backward(s, w.gate_proj, lora[kGate], c.m, c.low_rank[kGate], c.mask[kGate], d_gate,
                      dm, false);
  projection_backward(s, w.up_proj, lora[kUp], c.m, c.low_rank[kUp], c.mask[kUp], d_up, dm, true);
  Tensor dh = s.f32({n, cfg.hidden_size});
  s.b.rmsnorm_backward(c.h, w.post_attention_norm, eps, dm, dh);
  s.b.add_inplace(dh, dy);
  Tensor d_attn = s.f32(c.attn.shape());
  projection_backward(s, w.o_proj, lora[kO], c.attn, c.low_rank[kO], c.mask[kO], dh, d_attn, false);
  Tensor dq = s.f32(c.q.shape()), dk = s.f32(c.k.shape()), dv = s.f32(c.v.shape());
  s.b.attention_backward(c.q, c.k, c.v, c.attn, d_attn, dq, dk, dv);
  s.b.rope_backward(dq, s.positions, s.inv_freq);
  s.b.rope_backward(dk, s.positions, s.inv_freq);
  Tensor da = s.f32(c.a.shape());
  projection_backward(s, w.q_proj, lora[kQ], c.a, c.low_rank[kQ], c.mask[kQ],
                      dq.reshaped({n, cfg.q_dim()}), da, false);
  projection_backward(s, w.k_proj, lora[kK], c.a, c.low_rank[kK], c.mask[kK],
                      dk.reshaped({n, cfg.kv_dim()}), da, true);
  projection_backward(s, w.v_proj, lora[kV], c.a, c.low_rank[kV], c.mask[kV],
                      dv.reshaped({n, cfg.kv_dim()}), da, true);
  Tensor dx = s.f32({n, cfg.hidden_size});
  s.b.rmsnorm_backward(x, w.input_norm, eps, da, dx);
  s.b.add_inplace(dx, dh);
  return dx;
}

// Rows of logits per cross-entropy chunk: [chunk, vocab] f32 exist at a time (64 on the CPU; 256
// on a GPU, 128 MiB at a 128k vocabulary, for GEMMs large enough to fill it).
int64_t head_chunk_rows(const Backend& b) {
  return b.device() == Device::Cpu ? 64 : 256;
}

}  // namespace

// Final norm, LM head and cross-entropy in chunks of rows: [chunk, vocab] logits at a time.
// Returns sum(CE); with `dx` set, writes d(sum(CE) / normalizer)/d(x).
double LoraTrainModel::head(const Tensor& x, std::span<const int32_t> labels, double normalizer,
                            Tensor* dx, std::vector<float>* logits_out) {
  Backend& b = backend_;
  const int64_t n = x.dim(0), d = config_.hidden_size, vocab = config_.vocab_size;
  const float eps = float(config_.rms_norm_eps);
  std::vector<int32_t> host_targets(static_cast<size_t>(n), kIgnoreLabel);
  for (int64_t t = 0; t + 1 < n; ++t) {
    const int32_t target = labels[size_t(t + 1)];
    if (target != kIgnoreLabel && (target < 0 || target >= vocab)) {
      fail("label {} is out of range for a vocabulary of {}", target, vocab);
    }
    host_targets[size_t(t)] = target;
  }
  Tensor targets = b.alloc(DType::I32, {n});
  b.copy_from_host(targets, host_targets.data());
  Tensor losses = b.alloc(DType::F64, {n});
  Tensor normed = b.alloc(DType::F32, {n, d});
  b.rmsnorm(x, base_.final_norm, eps, normed);
  Tensor d_normed = dx ? b.alloc(DType::F32, {n, d}) : Tensor();
  if (logits_out) logits_out->assign(size_t(n * vocab), 0.0f);
  const int64_t chunk = head_chunk_rows(b);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    Tensor logits = b.alloc(DType::F32, {rows, vocab});
    b.linear(normed.slice_rows(r0, rows), base_.lm_head, logits);
    if (logits_out) b.copy_to_host(logits, logits_out->data() + r0 * vocab);
    Tensor row_losses = losses.slice_rows(r0, rows);
    b.cross_entropy(logits, targets.slice_rows(r0, rows), normalizer, row_losses);
    if (dx) {
      Tensor part = d_normed.slice_rows(r0, rows);
      b.linear_backward_input(logits, base_.lm_head, part, false);
    }
  }
  if (dx) b.rmsnorm_backward(x, base_.final_norm, eps, d_normed, *dx);
  std::vector<double> host_losses(static_cast<size_t>(n));
  b.copy_to_host(losses, host_losses.data());
  double loss = 0;
  for (const double l : host_losses)
    loss += l;
  return loss;
}

double LoraTrainModel::run(std::span<const int32_t> ids, std::span<const int32_t> labels,
                           double normalizer, bool backward, std::vector<float>* logits_out) {
  Backend& b = backend_;
  const int64_t n = int64_t(ids.size());
  if (n == 0) fail("training: empty sequence");
  if (!labels.empty() && labels.size() != ids.size()) {
    fail("training: labels and ids differ in length");
  }
  std::vector<int32_t> host_positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    host_positions[size_t(i)] = int32_t(i);
  Tensor positions = b.alloc(DType::I32, {n});
  b.copy_from_host(positions, host_positions.data());
  Tensor token_ids = b.alloc(DType::I32, {n});
  b.copy_from_host(token_ids, ids.data());
  Pass pass{b, config_, params_, positions, inv_freq_};
  if (backward) {
    pass.dropout = float(lora_config_.lora_dropout);
    pass.dropout_key = dropout_key_;
  }
  // Activation checkpointing: keep only each layer's input.
  std::vector<Tensor> inputs(layers_.size() + 1);
  inputs[0] = pass.f32({n, config_.hidden_size});
  b.embedding(base_.embed_tokens, token_ids, inputs[0]);
  // The last layer's activations stay from the forward pass: backward starts with that layer and
  // need not recompute it.
  Cache last_layer;
  for (size_t l = 0; l < layers_.size(); ++l) {
    Cache cache;
    pass.layer = int(l);
    inputs[l + 1] = pass.f32({n, config_.hidden_size});
    layer_forward(pass, *layers_[l].weights, layers_[l].lora, inputs[l], cache, &inputs[l + 1]);
    if (backward && l + 1 == layers_.size()) last_layer = std::move(cache);
  }
  std::vector<int32_t> no_labels;
  if (labels.empty()) no_labels.assign(size_t(n), kIgnoreLabel);
  const auto targets = labels.empty() ? std::span<const int32_t>(no_labels) : labels;
  Tensor dx = backward ? pass.f32({n, config_.hidden_size}) : Tensor();
  const double loss =
      head(inputs.back(), targets, normalizer, backward ? &dx : nullptr, logits_out);
  if (!backward) return loss;
  for (size_t l = layers_.size(); l-- > 0;) {
    Cache cache;
    pass.layer = int(l);
    if (l + 1 == layers_.size()) {
      cache = std::move(last_layer);
    } else {
      layer_forward(pass, *layers_[l].weights, layers_[l].lora, inputs[l], cache, nullptr);
    }
    inputs[l + 1] = Tensor();  // no longer needed: frees one [n, d] per layer as backward goes
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
