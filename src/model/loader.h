// Loading a Hugging Face Llama checkpoint folder: config.json, generation_config.json (optional),
// the safetensors weights (single file or sharded), bound by name and uploaded to a backend.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/llama_model.h"

namespace llamaq {

struct LoadedModel {
  std::filesystem::path dir;
  LlamaConfig config;
  GenerationConfig generation;
  int64_t weight_bytes = 0;  // bytes of tensor data in the checkpoint
  std::unique_ptr<LlamaModel> model;

  // The ids that end generation: config eos ids, then generation_config eos ids (deduplicated).
  std::vector<int32_t> eos_token_ids() const;
};

struct LoadOptions {
  // Quantize the seven projections of every layer to NF4 while loading (a checkpoint that is
  // already 4-bit keeps its own weights). Embeddings and norms stay as stored, as in
  // transformers + bitsandbytes; the LM head too unless quantize_lm_head.
  bool quantize_nf4 = false;
  bool double_quant = true;
  bool quantize_lm_head = false;
  int threads = 0;        // for quantizing; 0 = all hardware threads
  bool progress = false;  // progress bar on stderr while quantizing
  std::filesystem::path lora_dir;  // a PEFT LoRA adapter to apply (empty: none)
  // Read the weights into memory the process owns instead of using them from the checkpoint
  // mapping: slower start, no sharing between processes, faster CPU decode on machines where
  // reading through the mapping is slow (docs/perf.md).
  bool no_mmap = false;
};

// `log` receives one-line progress messages (may be empty).
LoadedModel load_model(const std::filesystem::path& dir, Backend& backend,
                       const std::function<void(const std::string&)>& log = {},
                       const LoadOptions& options = {});

// Checks a config's quantization_config: only bitsandbytes 4-bit is supported. Throws naming
// the file otherwise.
void check_quantization_config(const LlamaConfig& config, const std::string& config_path);

// Quantizes every dense projection (and the LM head when asked) of `weights` to NF4 in place.
void quantize_weights(LlamaWeights& weights, const LoadOptions& options);

}  // namespace llamaq
