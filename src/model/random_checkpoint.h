// Random-weight Llama 3 checkpoints of the real shapes (8B, 3.1-8B, 3.2-1B, 3.2-3B), written in
// Hugging Face layout (sharded bf16 safetensors + index, config.json, generation_config.json,
// tokenizer files), so benchmarks and memory measurements run on real shapes without downloads.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/weights.h"

namespace llamaq {

// Names of the presets: llama3-8b, llama3.1-8b, llama3.2-1b, llama3.2-3b.
std::vector<std::string> random_checkpoint_presets();

// The config.json of a preset (classic layout, as on the Hub). Throws for an unknown name.
nlohmann::json preset_config(const std::string& preset);

struct RandomCheckpointOptions {
  uint64_t seed = 0;
  int threads = 0;
  int64_t max_shard_bytes = int64_t(2) << 30;  // 2 GiB shards, each built in memory then written
  std::filesystem::path tokenizer_dir;         // tokenizer.json (+ config) to copy; may be empty
};

// The weights of a preset generated in memory (host bf16 tensors), as the checkpoint writer
// would write them: for benchmarks that should not touch the disk.
LlamaWeights random_weights(const LlamaConfig& config, uint64_t seed, int threads);

// Writes the checkpoint; returns the bytes of tensor data. Weights are uniform with the variance
// of N(0, 1/in_features) (embeddings N(0,1)-like, norms around 1), deterministic in the seed.
int64_t write_random_checkpoint(const std::filesystem::path& out_dir, const std::string& preset,
                                const RandomCheckpointOptions& options);

}  // namespace llamaq
