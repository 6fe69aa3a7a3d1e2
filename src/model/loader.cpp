#include "model/loader.h"

#include <algorithm>

#include "core/error.h"
#include "core/progress.h"
#include "core/resources.h"
#include "model/lora.h"
#include "model/weights.h"
#include "quant/nf4_codec.h"

namespace llamaq {

namespace fs = std::filesystem;

std::vector<int32_t> LoadedModel::eos_token_ids() const {
  std::vector<int32_t> ids = config.eos_token_ids;
  for (int32_t id : generation.eos_token_ids) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

void check_quantization_config(const LlamaConfig& config, const std::string& config_path) {
  if (!config.quantization_config) return;
  const nlohmann::json& q = *config.quantization_config;
  const std::string method = q.value("quant_method", std::string());
  if (method != "bitsandbytes" || !q.value("load_in_4bit", false)) {
    fail("{}: quantization_config {} is not supported (llamaq reads bitsandbytes 4-bit "
         "checkpoints: quant_method \"bitsandbytes\" with load_in_4bit)",
         config_path, q.dump());
  }
  const std::string type = q.value("bnb_4bit_quant_type", std::string("fp4"));
  if (type != "nf4" && type != "fp4") {
    fail("{}: bnb_4bit_quant_type \"{}\" is not supported (nf4 or fp4)", config_path, type);
  }
}

namespace {

std::vector<std::pair<std::string, LinearWeight*>> quantizable(LlamaWeights& w, bool lm_head) {
  std::vector<std::pair<std::string, LinearWeight*>> out;
  for (size_t i = 0; i < w.layers.size(); ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    for (auto [name, linear] : {std::pair{"q_proj", &l.q_proj}, {"k_proj", &l.k_proj},
                                {"v_proj", &l.v_proj}, {"o_proj", &l.o_proj},
                                {"gate_proj", &l.gate_proj}, {"up_proj", &l.up_proj},
                                {"down_proj", &l.down_proj}}) {
      if (!linear->quantized()) out.emplace_back(p + name, linear);
    }
  }
  // A tied head is the embedding table, which stays dense.
  if (lm_head && !w.lm_head.quantized() && w.lm_head.weight.data() != w.embed_tokens.data()) {
    out.emplace_back("lm_head", &w.lm_head);
  }
  return out;
}

}  // namespace

void quantize_weights(LlamaWeights& weights, const LoadOptions& options) {
  const auto todo = quantizable(weights, options.quantize_lm_head);
  if (todo.empty()) return;
  ThreadPool pool(options.threads);
  int64_t total_elements = 0;
  for (const auto& [name, linear] : todo) total_elements += linear->weight.numel();
  std::optional<ProgressBar> bar;
  if (options.progress) bar.emplace("quantizing to NF4", int64_t(todo.size()), "tensors");
  int64_t bytes_before = 0, bytes_after = 0;
  for (const auto& [name, linear] : todo) {
    bytes_before += linear->nbytes();
    auto q = std::make_shared<nf4::Nf4Weight>(nf4::quantize(linear->weight, options.double_quant, pool));
    *linear = LinearWeight::quantized(std::move(q));
    bytes_after += linear->nbytes();
    if (bar) bar->advance(1, name);
  }
  if (bar) {
    bar->finish(fmt::format("{:.1f} M weights, {:.1f} MiB -> {:.1f} MiB", double(total_elements) / 1e6,
                            double(bytes_before) / (1 << 20), double(bytes_after) / (1 << 20)));
  }
}

LoadedModel load_model(const fs::path& dir, Backend& backend,
                       const std::function<void(const std::string&)>& log,
                       const LoadOptions& options) {
  const Stopwatch clock;
  if (!fs::is_directory(dir)) fail("{}: not a checkpoint folder (no such directory)", dir.string());
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) fail("{}: missing (every checkpoint folder needs one)", config_path.string());

  LoadedModel loaded;
  loaded.dir = dir;
  loaded.config = load_llama_config(config_path);
  loaded.generation = load_generation_config(dir / "generation_config.json");
  check_quantization_config(loaded.config, config_path.string());
  const CheckpointTensors checkpoint = CheckpointTensors::open(dir);
  loaded.weight_bytes = checkpoint.total_bytes();
  LlamaWeights weights = bind_llama_weights(loaded.config, checkpoint);
  if (options.quantize_nf4) quantize_weights(weights, options);
  if (options.no_mmap) {
    const int64_t bytes = copy_weights_into_memory(weights);
    if (log) {
      log(fmt::format("--no-mmap: {:.1f} MiB of weights read into memory",
                      double(bytes) / (1 << 20)));
    }
  }
  if (!options.lora_dir.empty()) {
    attach_lora(weights, load_peft_adapter(options.lora_dir));
    if (log) log(fmt::format("adapter {} attached", options.lora_dir.string()));
  }
  loaded.model = std::make_unique<LlamaModel>(loaded.config, weights, backend);
  if (log) {
    const LlamaConfig& c = loaded.config;
    int64_t quantized = 0;
    for (const LayerWeights& l : weights.layers) {
      for (const LinearWeight* p : {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj,
                                    &l.up_proj, &l.down_proj}) {
        quantized += p->quantized();
      }
    }
    log(fmt::format("loaded {}: {} layers, hidden {}, heads {}/{} (kv), head_dim {}, vocab {}, "
                    "{:.1f} MiB of weights in {} file(s), {} of {} projections NF4{}, {:.2f} s",
                    dir.string(), c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                    c.num_key_value_heads, c.head_dim, c.vocab_size,
                    double(loaded.weight_bytes) / (1 << 20), checkpoint.files().size(), quantized,
                    7 * c.num_hidden_layers, weights.lm_head.quantized() ? " + NF4 head" : "",
                    clock.seconds()));
  }
  return loaded;
}

}  // namespace llamaq
