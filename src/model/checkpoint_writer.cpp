#include "model/checkpoint_writer.h"

#include <nlohmann/json.hpp>

#include <deque>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "quant/bnb_tensors.h"

namespace llamaq {
namespace {

namespace fs = std::filesystem;

// Files next to the weights that a user of the checkpoint needs, copied as they are.
constexpr const char* kCopiedFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "generation_config.json"};

std::span<const uint8_t> bytes_of(const Tensor& t) {
  return {static_cast<const uint8_t*>(t.data()), size_t(t.nbytes())};
}

class TensorList {
 public:
  void dense(const std::string& name, const Tensor& t) {
    tensors_.push_back({name, t.dtype(), t.shape(), bytes_of(t)});
  }
  void linear(const std::string& name, const LinearWeight& w) {
    if (w.quantized()) {
      nf4::append_bnb_tensors(name, *w.nf4, tensors_, storage_);
    } else {
      dense(name, w.weight);
    }
  }
  std::vector<SafetensorsTensorData>& tensors() { return tensors_; }

 private:
  std::vector<SafetensorsTensorData> tensors_;
  std::deque<std::string> storage_;
};

nlohmann::json output_config(const fs::path& source_dir, const LlamaWeights& weights,
                             const CheckpointWriteOptions& options, const LlamaConfig& config) {
  const fs::path path = source_dir / "config.json";
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
  json.erase("quantization_config");
  bool any_quantized = weights.lm_head.quantized();
  for (const LayerWeights& l : weights.layers) any_quantized |= l.q_proj.quantized();
  if (any_quantized) {
    std::vector<std::string> skip;
    if (!weights.lm_head.quantized() && !config.tie_word_embeddings) skip.push_back("lm_head");
    json["quantization_config"] = nf4::quantization_config(options.double_quant, config.torch_dtype, skip);
  }
  return json;
}

}  // namespace

int64_t write_llama_checkpoint(const fs::path& out_dir, const fs::path& source_dir,
                               const LlamaConfig& config, const LlamaWeights& weights,
                               const CheckpointWriteOptions& options) {
  std::error_code ec;
  if (fs::exists(out_dir) && fs::equivalent(out_dir, source_dir, ec)) {
    fail("{}: the output folder must differ from the input folder", out_dir.string());
  }
  fs::create_directories(out_dir, ec);
  if (ec) fail("{}: cannot create folder: {}", out_dir.string(), ec.message());

  TensorList list;
  list.dense("model.embed_tokens.weight", weights.embed_tokens);
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    const LayerWeights& l = weights.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    list.dense(p + "input_layernorm.weight", l.input_norm);
    list.linear(p + "self_attn.q_proj.weight", l.q_proj);
    list.linear(p + "self_attn.k_proj.weight", l.k_proj);
    list.linear(p + "self_attn.v_proj.weight", l.v_proj);
    list.linear(p + "self_attn.o_proj.weight", l.o_proj);
    list.dense(p + "post_attention_layernorm.weight", l.post_attention_norm);
    list.linear(p + "mlp.gate_proj.weight", l.gate_proj);
    list.linear(p + "mlp.up_proj.weight", l.up_proj);
    list.linear(p + "mlp.down_proj.weight", l.down_proj);
  }
  list.dense("model.norm.weight", weights.final_norm);
  if (!config.tie_word_embeddings) list.linear("lm_head.weight", weights.lm_head);

  int64_t bytes = 0;
  for (const auto& t : list.tensors()) bytes += int64_t(t.bytes.size());
  write_safetensors(out_dir / "model.safetensors", list.tensors());
  // A stale index from an earlier sharded checkpoint in the folder would shadow the new file.
  fs::remove(out_dir / "model.safetensors.index.json", ec);
  write_file_atomic(out_dir / "config.json", output_config(source_dir, weights, options, config).dump(2) + "\n");
  for (const char* name : kCopiedFiles) {
    if (fs::exists(source_dir / name)) write_file_atomic(out_dir / name, read_text_file(source_dir / name));
  }
  return bytes;
}

}  // namespace llamaq
