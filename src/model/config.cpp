#include "model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace llamaq {
namespace {

using nlohmann::json;

// Sizes beyond these are not Llama models; refusing them avoids absurd allocations.
constexpr int64_t kMaxDimension = int64_t(1) << 20;
constexpr int64_t kMaxVocab = int64_t(1) << 24;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxPositions = int64_t(1) << 24;

json parse_json(std::string_view text, std::string_view label) {
  try {
    json value = json::parse(text);
    if (!value.is_object()) fail("{}: expected a JSON object at the top level", label);
    return value;
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", label, e.what());
  }
}

int64_t get_int(const json& obj, const char* key, std::string_view label, int64_t min_value,
                int64_t max_value) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) fail("{}: missing required field \"{}\"", label, key);
  if (!it->is_number_integer()) {
    fail("{}: \"{}\" must be an integer, got {}", label, key, it->dump());
  }
  const int64_t value = it->get<int64_t>();
  if (value < min_value || value > max_value) {
    fail("{}: \"{}\" = {} is out of range [{}, {}]", label, key, value, min_value, max_value);
  }
  return value;
}

double get_positive_number(const json& obj, const char* key, std::string_view label) {
  const auto& value = obj.at(key);
  if (!value.is_number()) fail("{}: \"{}\" must be a number, got {}", label, key, value.dump());
  const double x = value.get<double>();
  if (!std::isfinite(x) || x <= 0) fail("{}: \"{}\" = {} must be finite and > 0", label, key, x);
  return x;
}

std::optional<int32_t> get_token_id(const json& obj, const char* key, std::string_view label) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > INT32_MAX) {
    fail("{}: \"{}\" must be a non-negative token id, got {}", label, key, it->dump());
  }
  return int32_t(it->get<int64_t>());
}

std::vector<int32_t> get_token_ids(const json& obj, const char* key, std::string_view label) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_array()) return {*get_token_id(obj, key, label)};
  std::vector<int32_t> ids;
  for (const json& item : *it) {
    if (!item.is_number_integer() || item.get<int64_t>() < 0 || item.get<int64_t>() > INT32_MAX) {
      fail("{}: \"{}\" must hold non-negative token ids, got {}", label, key, item.dump());
    }
    ids.push_back(int32_t(item.get<int64_t>()));
  }
  return ids;
}

RopeScaling parse_rope_scaling(const json& scaling, std::string_view label) {
  RopeScaling result;
  if (scaling.is_null()) return result;
  if (!scaling.is_object()) fail("{}: rope scaling must be an object or null", label);
  std::string type = "default";
  if (scaling.contains("rope_type")) {
    type = scaling["rope_type"].is_string() ? scaling["rope_type"].get<std::string>() : "";
  } else if (scaling.contains("type")) {
    type = scaling["type"].is_string() ? scaling["type"].get<std::string>() : "";
  }
  if (type == "default") return result;
  if (type != "llama3") {
    fail("{}: rope scaling type \"{}\" is not supported (only \"llama3\" and default)", label,
         type);
  }
  result.type = type;
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"}) {
    if (!scaling.contains(key)) fail("{}: llama3 rope scaling needs \"{}\"", label, key);
  }
  result.factor = get_positive_number(scaling, "factor", label);
  result.low_freq_factor = get_positive_number(scaling, "low_freq_factor", label);
  result.high_freq_factor = get_positive_number(scaling, "high_freq_factor", label);
  result.original_max_position_embeddings =
      get_int(scaling, "original_max_position_embeddings", label, 1, kMaxPositions);
  if (result.high_freq_factor <= result.low_freq_factor) {
    fail("{}: llama3 rope scaling needs high_freq_factor > low_freq_factor", label);
  }
  return result;
}

void parse_rope(const json& cfg, LlamaConfig& config, std::string_view label) {
  // transformers 5 nests everything in rope_parameters; older files use the top level.
  const json* params = nullptr;
  if (cfg.contains("rope_parameters") && !cfg["rope_parameters"].is_null()) {
    params = &cfg["rope_parameters"];
    if (!params->is_object()) fail("{}: \"rope_parameters\" must be an object", label);
  }
  if (params && params->contains("rope_theta")) {
    config.rope_theta = get_positive_number(*params, "rope_theta", label);
  } else if (cfg.contains("rope_theta")) {
    config.rope_theta = get_positive_number(cfg, "rope_theta", label);
  }
  if (params) {
    config.rope_scaling = parse_rope_scaling(*params, label);
  } else if (cfg.contains("rope_scaling")) {
    config.rope_scaling = parse_rope_scaling(cfg["rope_scaling"], label);
  }
}

void check_architecture(const json& cfg, std::string_view label) {
  const auto type = cfg.find("model_type");
  if (type != cfg.end() && (!type->is_string() || type->get<std::string>() != "llama")) {
    fail("{}: model_type {} is not supported (llamaq runs \"llama\" models)", label, type->dump());
  }
  const auto act = cfg.find("hidden_act");
  if (act != cfg.end() && (!act->is_string() || act->get<std::string>() != "silu")) {
    fail("{}: hidden_act {} is not supported (Llama uses \"silu\")", label, act->dump());
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    const auto it = cfg.find(key);
    if (it != cfg.end() && !(it->is_boolean() && !it->get<bool>())) {
      fail("{}: \"{}\": {} is not supported (Llama 3 has no biases)", label, key, it->dump());
    }
  }
}

DType parse_torch_dtype(const json& cfg, std::string_view label) {
  const json* value = nullptr;
  if (cfg.contains("dtype")) value = &cfg["dtype"];
  if (cfg.contains("torch_dtype")) value = &cfg["torch_dtype"];
  if (!value || value->is_null()) return DType::BF16;
  const std::string name = value->is_string() ? value->get<std::string>() : "";
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  if (name == "float32") return DType::F32;
  fail("{}: torch_dtype {} is not supported (bfloat16, float16 or float32)", label, value->dump());
}

}  // namespace

LlamaConfig parse_llama_config(std::string_view json_text, std::string_view label) {
  const json cfg = parse_json(json_text, label);
  check_architecture(cfg, label);
  LlamaConfig c;
  c.vocab_size = get_int(cfg, "vocab_size", label, 1, kMaxVocab);
  c.hidden_size = get_int(cfg, "hidden_size", label, 1, kMaxDimension);
  c.intermediate_size = get_int(cfg, "intermediate_size", label, 1, kMaxDimension);
  c.num_hidden_layers = get_int(cfg, "num_hidden_layers", label, 1, kMaxLayers);
  c.num_attention_heads = get_int(cfg, "num_attention_heads", label, 1, kMaxDimension);
  c.num_key_value_heads = cfg.contains("num_key_value_heads")
                              ? get_int(cfg, "num_key_value_heads", label, 1, kMaxDimension)
                              : c.num_attention_heads;
  if (cfg.contains("head_dim") && !cfg["head_dim"].is_null()) {
    c.head_dim = get_int(cfg, "head_dim", label, 2, kMaxDimension);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      fail("{}: hidden_size {} is not divisible by num_attention_heads {}", label, c.hidden_size,
           c.num_attention_heads);
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", label, c.head_dim);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", label,
         c.num_attention_heads, c.num_key_value_heads);
  }
  if (c.q_dim() > kMaxDimension) fail("{}: num_attention_heads x head_dim is too large", label);
  c.max_position_embeddings =
      cfg.contains("max_position_embeddings")
          ? get_int(cfg, "max_position_embeddings", label, 1, kMaxPositions)
          : 2048;
  if (cfg.contains("rms_norm_eps")) c.rms_norm_eps = get_positive_number(cfg, "rms_norm_eps", label);
  parse_rope(cfg, c, label);
  if (cfg.contains("tie_word_embeddings")) {
    if (!cfg["tie_word_embeddings"].is_boolean()) {
      fail("{}: \"tie_word_embeddings\" must be true or false", label);
    }
    c.tie_word_embeddings = cfg["tie_word_embeddings"].get<bool>();
  }
  c.bos_token_id = get_token_id(cfg, "bos_token_id", label);
  c.eos_token_ids = get_token_ids(cfg, "eos_token_id", label);
  c.pad_token_id = get_token_id(cfg, "pad_token_id", label);
  c.torch_dtype = parse_torch_dtype(cfg, label);
  if (cfg.contains("quantization_config") && !cfg["quantization_config"].is_null()) {
    c.quantization_config = cfg["quantization_config"];
  }
  return c;
}

LlamaConfig load_llama_config(const std::filesystem::path& path) {
  return parse_llama_config(read_text_file(path), path.string());
}

GenerationConfig parse_generation_config(std::string_view json_text, std::string_view label) {
  const json cfg = parse_json(json_text, label);
  GenerationConfig g;
  g.eos_token_ids = get_token_ids(cfg, "eos_token_id", label);
  auto number = [&](const char* key) -> std::optional<double> {
    if (!cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
    if (!cfg[key].is_number() || !std::isfinite(cfg[key].get<double>()) ||
        cfg[key].get<double>() < 0) {
      fail("{}: \"{}\" must be a non-negative number, got {}", label, key, cfg[key].dump());
    }
    return cfg[key].get<double>();
  };
  if (cfg.contains("do_sample") && cfg["do_sample"].is_boolean()) {
    g.do_sample = cfg["do_sample"].get<bool>();
  }
  g.temperature = number("temperature");
  g.top_p = number("top_p");
  g.repetition_penalty = number("repetition_penalty");
  if (auto k = number("top_k")) g.top_k = int64_t(*k);
  if (auto n = number("max_new_tokens")) g.max_new_tokens = int64_t(*n);
  return g;
}

GenerationConfig load_generation_config(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return {};
  return parse_generation_config(read_text_file(path), path.string());
}

}  // namespace llamaq
