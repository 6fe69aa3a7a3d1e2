// LlamaConfig: the architecture fields of a Hugging Face `config.json` for Llama 3, 3.1 and 3.2
// (specs §4.1), in both the classic layout (rope_theta + rope_scaling) and the transformers 5
// layout (rope_parameters). Parsing validates every field so a bad file fails at load time.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "io/text_file.h"

namespace llamaq {

struct RopeScaling {
  std::string type = "default";  // "default" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // explicit in 3.2 configs, else hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  std::optional<int32_t> pad_token_id;
  DType torch_dtype = DType::BF16;
  // The raw `quantization_config` object of pre-quantized checkpoints (bitsandbytes), if any.
  std::optional<nlohmann::json> quantization_config;

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

// Parses config.json text; `label` (the path) starts every error message.
LlamaConfig parse_llama_config(std::string_view json_text, std::string_view label);
LlamaConfig load_llama_config(const std::filesystem::path& path);

// Sampling defaults and stop ids from `generation_config.json` (all optional).
struct GenerationConfig {
  std::vector<int32_t> eos_token_ids;
  std::optional<bool> do_sample;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<double> repetition_penalty;
  std::optional<int64_t> max_new_tokens;
};

GenerationConfig parse_generation_config(std::string_view json_text, std::string_view label);
// Returns defaults when the file does not exist.
GenerationConfig load_generation_config(const std::filesystem::path& path);


}  // namespace llamaq
