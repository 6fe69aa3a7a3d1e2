#include "model/loader.h"

#include <algorithm>

#include "core/error.h"
#include "core/resources.h"
#include "model/weights.h"

namespace llamaq {

namespace fs = std::filesystem;

std::vector<int32_t> LoadedModel::eos_token_ids() const {
  std::vector<int32_t> ids = config.eos_token_ids;
  for (int32_t id : generation.eos_token_ids) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

LoadedModel load_model(const fs::path& dir, Backend& backend,
                       const std::function<void(const std::string&)>& log) {
  const Stopwatch clock;
  if (!fs::is_directory(dir)) fail("{}: not a checkpoint folder (no such directory)", dir.string());
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) fail("{}: missing (every checkpoint folder needs one)", config_path.string());

  LoadedModel loaded;
  loaded.dir = dir;
  loaded.config = load_llama_config(config_path);
  loaded.generation = load_generation_config(dir / "generation_config.json");
  if (loaded.config.quantization_config) {
    fail("{}: pre-quantized checkpoints (quantization_config) are not supported by this build",
         config_path.string());
  }
  const CheckpointTensors checkpoint = CheckpointTensors::open(dir);
  loaded.weight_bytes = checkpoint.total_bytes();
  const LlamaWeights weights = bind_llama_weights(loaded.config, checkpoint);
  loaded.model = std::make_unique<LlamaModel>(loaded.config, weights, backend);
  if (log) {
    const LlamaConfig& c = loaded.config;
    log(fmt::format("loaded {}: {} layers, hidden {}, heads {}/{} (kv), head_dim {}, vocab {}, "
                    "{:.1f} MiB of weights in {} file(s), {:.2f} s",
                    dir.string(), c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                    c.num_key_value_heads, c.head_dim, c.vocab_size,
                    double(loaded.weight_bytes) / (1 << 20), checkpoint.files().size(),
                    clock.seconds()));
  }
  return loaded;
}

}  // namespace llamaq
