#include "model/random_checkpoint.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace llamaq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct TensorPlan {
  std::string name;
  Shape shape;
  float half_range;  // uniform in [center - half_range, center + half_range]
  float center;
};

json rope_llama3(double factor) {
  return {{"factor", factor}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
          {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
}

// SplitMix64: a fast, well-mixed generator; one stream per chunk keeps output thread-independent.
uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::vector<TensorPlan> plan(const LlamaConfig& c) {
  const auto uniform_for = [](int64_t fan_in) { return float(std::sqrt(3.0 / double(fan_in))); };
  std::vector<TensorPlan> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, 1.7f, 0.0f});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {c.hidden_size}, 0.1f, 1.0f});
    out.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), c.hidden_size}, uniform_for(c.hidden_size), 0});
    out.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), c.hidden_size}, uniform_for(c.hidden_size), 0});
    out.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), c.hidden_size}, uniform_for(c.hidden_size), 0});
    out.push_back({p + "self_attn.o_proj.weight", {c.hidden_size, c.q_dim()}, uniform_for(c.q_dim()), 0});
    out.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}, 0.1f, 1.0f});
    out.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}, uniform_for(c.hidden_size), 0});
    out.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}, uniform_for(c.hidden_size), 0});
    out.push_back({p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}, uniform_for(c.intermediate_size), 0});
  }
  out.push_back({"model.norm.weight", {c.hidden_size}, 0.1f, 1.0f});
  if (!c.tie_word_embeddings) {
    out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, uniform_for(c.hidden_size), 0});
  }
  return out;
}

void fill(const TensorPlan& t, uint64_t seed, uint16_t* out, ThreadPool& pool) {
  const int64_t n = shape_numel(t.shape);
  constexpr int64_t kChunk = 1 << 16;
  pool.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      uint64_t state = seed ^ (uint64_t(chunk) * 0xd1b54a32d192ed03ull);
      for (int64_t i = chunk * kChunk; i < std::min(n, (chunk + 1) * kChunk); ++i) {
        const float u = float(splitmix(state) >> 40) * 0x1.0p-24f * 2.0f - 1.0f;  // [-1, 1)
        out[i] = float_to_bf16(t.center + t.half_range * u);
      }
    }
  });
}

}  // namespace

std::vector<std::string> random_checkpoint_presets() {
  return {"llama3-8b", "llama3.1-8b", "llama3.2-1b", "llama3.2-3b"};
}

json preset_config(const std::string& preset) {
  json c = {{"architectures", {"LlamaForCausalLM"}}, {"attention_bias", false},
            {"attention_dropout", 0.0}, {"bos_token_id", 128000}, {"hidden_act", "silu"},
            {"initializer_range", 0.02}, {"mlp_bias", false}, {"model_type", "llama"},
            {"num_key_value_heads", 8}, {"pretraining_tp", 1}, {"rms_norm_eps", 1e-05},
            {"rope_theta", 500000.0}, {"torch_dtype", "bfloat16"}, {"use_cache", true},
            {"vocab_size", 128256}};
  if (preset == "llama3-8b" || preset == "llama3.1-8b") {
    c.update({{"hidden_size", 4096}, {"intermediate_size", 14336}, {"num_attention_heads", 32},
              {"num_hidden_layers", 32}, {"tie_word_embeddings", false}});
    if (preset == "llama3-8b") {
      c.update({{"max_position_embeddings", 8192}, {"rope_scaling", nullptr}, {"eos_token_id", 128009}});
    } else {
      c.update({{"max_position_embeddings", 131072}, {"rope_scaling", rope_llama3(8.0)},
                {"eos_token_id", {128001, 128008, 128009}}});
    }
  } else if (preset == "llama3.2-1b" || preset == "llama3.2-3b") {
    const bool small = preset == "llama3.2-1b";
    c.update({{"hidden_size", small ? 2048 : 3072}, {"intermediate_size", 8192},
              {"num_attention_heads", small ? 32 : 24}, {"num_hidden_layers", small ? 16 : 28},
              {"head_dim", small ? 64 : 128}, {"tie_word_embeddings", true},
              {"max_position_embeddings", 131072}, {"rope_scaling", rope_llama3(32.0)},
              {"eos_token_id", {128001, 128008, 128009}}});
  } else {
    fail("unknown preset \"{}\" (llama3-8b, llama3.1-8b, llama3.2-1b, llama3.2-3b)", preset);
  }
  return c;
}

LlamaWeights random_weights(const LlamaConfig& config, uint64_t seed, int threads) {
  ThreadPool pool(threads);
  std::map<std::string, Tensor> tensors;
  const std::vector<TensorPlan> plans = plan(config);
  for (size_t index = 0; index < plans.size(); ++index) {
    Tensor t = Tensor::zeros(DType::BF16, plans[index].shape);
    fill(plans[index], seed * 0x9e3779b97f4a7c15ull + index, t.data_as<uint16_t>(), pool);
    tensors[plans[index].name] = std::move(t);
  }
  auto take = [&](const std::string& name) { return tensors.at(name); };
  LlamaWeights w;
  w.embed_tokens = take("model.embed_tokens.weight");
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.input_norm = take(p + "input_layernorm.weight");
    l.q_proj = LinearWeight::dense(take(p + "self_attn.q_proj.weight"));
    l.k_proj = LinearWeight::dense(take(p + "self_attn.k_proj.weight"));
    l.v_proj = LinearWeight::dense(take(p + "self_attn.v_proj.weight"));
    l.o_proj = LinearWeight::dense(take(p + "self_attn.o_proj.weight"));
    l.post_attention_norm = take(p + "post_attention_layernorm.weight");
    l.gate_proj = LinearWeight::dense(take(p + "mlp.gate_proj.weight"));
    l.up_proj = LinearWeight::dense(take(p + "mlp.up_proj.weight"));
    l.down_proj = LinearWeight::dense(take(p + "mlp.down_proj.weight"));
    w.layers.push_back(std::move(l));
  }
  w.final_norm = take("model.norm.weight");
  w.lm_head = config.tie_word_embeddings ? LinearWeight::dense(w.embed_tokens)
                                         : LinearWeight::dense(take("lm_head.weight"));
  return w;
}

int64_t write_random_checkpoint(const fs::path& out_dir, const std::string& preset,
                                const RandomCheckpointOptions& options) {
  const json config_json = preset_config(preset);
  const LlamaConfig config = parse_llama_config(config_json.dump(), preset);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("{}: cannot create folder: {}", out_dir.string(), ec.message());
  const std::vector<TensorPlan> tensors = plan(config);

  // Group tensors into shards of at most max_shard_bytes (a tensor larger than that gets its own).
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t bytes = shape_numel(tensors[i].shape) * 2;
    if (shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
    total += bytes;
  }
  ThreadPool pool(options.threads);
  ProgressBar bar("writing " + preset, total >> 20, "MiB");
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    std::vector<std::vector<uint16_t>> buffers;
    std::vector<SafetensorsTensorData> data;
    for (size_t index : shards[s]) {
      const TensorPlan& t = tensors[index];
      buffers.emplace_back(size_t(shape_numel(t.shape)));
      fill(t, options.seed * 0x9e3779b97f4a7c15ull + index, buffers.back().data(), pool);
      data.push_back({t.name, DType::BF16, t.shape,
                      {reinterpret_cast<const uint8_t*>(buffers.back().data()), buffers.back().size() * 2}});
      weight_map[t.name] = file;
    }
    write_safetensors(out_dir / file, std::move(data));
    int64_t written = 0;
    for (const auto& b : buffers) written += int64_t(b.size()) * 2;
    bar.advance(written >> 20, file);
  }
  bar.finish();
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_file_atomic(out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
  write_file_atomic(out_dir / "config.json", config_json.dump(2) + "\n");
  const json generation = {{"bos_token_id", 128000}, {"do_sample", true},
                           {"eos_token_id", config_json["eos_token_id"]}, {"temperature", 0.6},
                           {"top_p", 0.9}};
  write_file_atomic(out_dir / "generation_config.json", generation.dump(2) + "\n");
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    if (!options.tokenizer_dir.empty() && fs::exists(options.tokenizer_dir / name)) {
      write_file_atomic(out_dir / name, read_text_file(options.tokenizer_dir / name));
    }
  }
  return total;
}

}  // namespace llamaq
