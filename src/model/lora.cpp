#include "model/lora.h"

#include <set>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "quant/nf4_codec.h"

namespace llamaq {

std::vector<std::pair<std::string, LinearWeight*>> named_projections(LlamaWeights& w) {
  std::vector<std::pair<std::string, LinearWeight*>> out;
  for (size_t i = 0; i < w.layers.size(); ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "self_attn.q_proj", &l.q_proj);
    out.emplace_back(p + "self_attn.k_proj", &l.k_proj);
    out.emplace_back(p + "self_attn.v_proj", &l.v_proj);
    out.emplace_back(p + "self_attn.o_proj", &l.o_proj);
    out.emplace_back(p + "mlp.gate_proj", &l.gate_proj);
    out.emplace_back(p + "mlp.up_proj", &l.up_proj);
    out.emplace_back(p + "mlp.down_proj", &l.down_proj);
  }
  return out;
}

void attach_lora(LlamaWeights& weights, const PeftAdapter& adapter) {
  const std::string file = (adapter.dir / "adapter_model.safetensors").string();
  std::set<std::string> used;
  for (auto& [name, linear] : named_projections(weights)) {
    const auto it = adapter.modules.find(name);
    if (it == adapter.modules.end()) {
      if (adapter.config.targets(name)) {
        fail("{}: adapter_config.json targets `{}` but the file has no tensors for it", file, name);
      }
      continue;
    }
    const LoraTensors& t = it->second;
    const int64_t r = t.a.dim(0);
    if (t.a.dim(1) != linear->in_features() || t.b.dim(0) != linear->out_features()) {
      fail("{}: `{}`: lora_A {} and lora_B {} do not fit the [{}, {}] projection", file, name,
           shape_to_string(t.a.shape()), shape_to_string(t.b.shape()), linear->out_features(),
           linear->in_features());
    }
    if (r != adapter.config.rank_for(name)) {
      fail("{}: `{}` has rank {} but adapter_config.json says {}", file, name, r,
           adapter.config.rank_for(name));
    }
    auto lora = std::make_shared<LoraWeights>();
    lora->a = t.a;
    lora->b = t.b;
    lora->scale = float(adapter.config.scaling_for(name));
    lora->b_scaled = Tensor::zeros(DType::F32, t.b.shape());
    for (int64_t i = 0; i < t.b.numel(); ++i) {
      lora->b_scaled.data_as<float>()[i] = t.b.data_as<const float>()[i] * lora->scale;
    }
    linear->lora = std::move(lora);
    used.insert(name);
  }
  for (const auto& [name, t] : adapter.modules) {
    if (!used.count(name)) fail("{}: module `{}` is not a projection of this model", file, name);
  }
}

namespace {

// [out, in] f32: the base weight (dense or dequantized NF4) plus scale * B A when there is a
// LoRA branch.
Tensor merged_f32(const LinearWeight& w, ThreadPool& pool) {
  const int64_t out = w.out_features(), in = w.in_features();
  Tensor merged = Tensor::zeros(DType::F32, {out, in});
  float* m = merged.data_as<float>();
  const LoraWeights* lora = w.lora.get();
  const int64_t r = lora ? lora->rank() : 0;
  const float* a = lora ? lora->a.data_as<const float>() : nullptr;
  const float* b = lora ? lora->b.data_as<const float>() : nullptr;
  pool.parallel_for(out, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      float* row = m + o * in;
      if (w.nf4) {
        nf4::dequantize_rows(*w.nf4, o, 1, row);
      } else {
        cpu::load_row_f32(w.weight, o, row);
      }
      for (int64_t i = 0; lora && i < in; ++i) {
        float delta = 0;
        for (int64_t k = 0; k < r; ++k) delta += b[o * r + k] * a[k * in + i];
        row[i] += delta * lora->scale;
      }
    }
  });
  return merged;
}

}  // namespace

void merge_lora(LlamaWeights& weights, DType dtype, ThreadPool& pool, bool densify_all) {
  if (dtype != DType::F32 && dtype != DType::BF16) fail("merge: the output dtype must be F32 or BF16");
  for (auto& [name, linear] : named_projections(weights)) {
    if (!linear->lora && !(densify_all && linear->quantized())) continue;
    Tensor merged = merged_f32(*linear, pool);
    if (dtype == DType::BF16) {
      Tensor bf16 = Tensor::zeros(DType::BF16, merged.shape());
      for (int64_t i = 0; i < merged.numel(); ++i) {
        bf16.data_as<uint16_t>()[i] = float_to_bf16(merged.data_as<const float>()[i]);
      }
      merged = bf16;
    }
    *linear = LinearWeight::dense(merged);
  }
}

}  // namespace llamaq
