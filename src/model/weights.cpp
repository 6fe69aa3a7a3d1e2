#include "model/weights.h"

#include <cstring>
#include <set>

#include "core/error.h"
#include "quant/bnb_tensors.h"

namespace llamaq {
namespace {

class Binder {
 public:
  explicit Binder(const CheckpointTensors& checkpoint) : checkpoint_(checkpoint) {}

  Tensor bind(const std::string& name, const Shape& expected) {
    const auto located = checkpoint_.find(name);
    if (!located.entry) {
      fail("{}: missing tensor `{}` (expected shape {})", checkpoint_.expected_file(name), name,
           shape_to_string(expected));
    }
    const SafetensorsEntry& entry = *located.entry;
    const std::string file = located.file->path().string();
    if (entry.shape != expected) {
      fail("{}: tensor `{}` has shape {}, expected {}", file, name, shape_to_string(entry.shape),
           shape_to_string(expected));
    }
    if (entry.dtype != DType::BF16 && entry.dtype != DType::F16 && entry.dtype != DType::F32) {
      fail("{}: tensor `{}` has dtype {}, expected BF16, F16 or F32", file, name,
           dtype_name(entry.dtype));
    }
    used_.insert(name);
    return located.file->tensor(entry);
  }

  // A dense matrix, or (decided per tensor, as transformers does) a bitsandbytes 4-bit group.
  LinearWeight linear(const std::string& name, int64_t out, int64_t in) {
    if (!nf4::is_bnb_quantized(checkpoint_, name)) return LinearWeight::dense(bind(name, {out, in}));
    std::vector<std::string> group;
    auto weight = std::make_shared<nf4::Nf4Weight>(nf4::read_bnb_weight(checkpoint_, name, out, in, group));
    used_.insert(group.begin(), group.end());
    return LinearWeight::quantized(std::move(weight));
  }

  // Every tensor must have been used, except stray rotary caches old converters wrote.
  void check_all_used() const {
    for (const std::string& name : checkpoint_.names()) {
      if (used_.count(name) || name.ends_with(".rotary_emb.inv_freq")) continue;
      const auto located = checkpoint_.find(name);
      fail("{}: unexpected tensor `{}` (shape {}) that a Llama model does not use",
           located.file->path().string(), name, shape_to_string(located.entry->shape));
    }
  }

 private:
  const CheckpointTensors& checkpoint_;
  std::set<std::string> used_;
};

}  // namespace

namespace {

Tensor owned_copy(const Tensor& t, int64_t& bytes) {
  if (t.empty()) return t;
  Tensor copy = Tensor::zeros(t.dtype(), t.shape());
  std::memcpy(copy.data(), t.data(), size_t(t.nbytes()));
  bytes += t.nbytes();
  return copy;
}

void copy_linear(LinearWeight& w, int64_t& bytes) {
  w.weight = owned_copy(w.weight, bytes);
  if (w.nf4) {
    auto q = std::make_shared<nf4::Nf4Weight>(*w.nf4);
    q->packed = owned_copy(q->packed, bytes);
    q->absmax = owned_copy(q->absmax, bytes);
    q->nested_absmax = owned_copy(q->nested_absmax, bytes);
    q->nested_map = owned_copy(q->nested_map, bytes);
    w.nf4 = std::move(q);
  }
}

}  // namespace

int64_t copy_weights_into_memory(LlamaWeights& weights) {
  int64_t bytes = 0;
  const bool tied =
      !weights.lm_head.quantized() && weights.lm_head.weight.data() == weights.embed_tokens.data();
  weights.embed_tokens = owned_copy(weights.embed_tokens, bytes);
  weights.final_norm = owned_copy(weights.final_norm, bytes);
  if (tied) {
    weights.lm_head.weight = weights.embed_tokens;
  } else {
    copy_linear(weights.lm_head, bytes);
  }
  for (LayerWeights& l : weights.layers) {
    l.input_norm = owned_copy(l.input_norm, bytes);
    l.post_attention_norm = owned_copy(l.post_attention_norm, bytes);
    for (LinearWeight* p :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      copy_linear(*p, bytes);
    }
  }
  return bytes;
}

LlamaWeights bind_llama_weights(const LlamaConfig& c, const CheckpointTensors& checkpoint) {
  Binder binder(checkpoint);
  LlamaWeights w;
  w.embed_tokens = binder.bind("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights layer;
    layer.input_norm = binder.bind(p + "input_layernorm.weight", {c.hidden_size});
    layer.q_proj = binder.linear(p + "self_attn.q_proj.weight", c.q_dim(), c.hidden_size);
    layer.k_proj = binder.linear(p + "self_attn.k_proj.weight", c.kv_dim(), c.hidden_size);
    layer.v_proj = binder.linear(p + "self_attn.v_proj.weight", c.kv_dim(), c.hidden_size);
    layer.o_proj = binder.linear(p + "self_attn.o_proj.weight", c.hidden_size, c.q_dim());
    layer.post_attention_norm = binder.bind(p + "post_attention_layernorm.weight", {c.hidden_size});
    layer.gate_proj = binder.linear(p + "mlp.gate_proj.weight", c.intermediate_size, c.hidden_size);
    layer.up_proj = binder.linear(p + "mlp.up_proj.weight", c.intermediate_size, c.hidden_size);
    layer.down_proj = binder.linear(p + "mlp.down_proj.weight", c.hidden_size, c.intermediate_size);
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = binder.bind("model.norm.weight", {c.hidden_size});
  if (c.tie_word_embeddings) {
    // Tied: the head is the embedding table. A stray lm_head.weight is checked and ignored, as
    // transformers re-ties it after loading.
    if (checkpoint.find("lm_head.weight").entry) binder.linear("lm_head.weight", c.vocab_size, c.hidden_size);
    w.lm_head = LinearWeight::dense(w.embed_tokens);
  } else {
    w.lm_head = binder.linear("lm_head.weight", c.vocab_size, c.hidden_size);
  }
  binder.check_all_used();
  return w;
}

}  // namespace llamaq
