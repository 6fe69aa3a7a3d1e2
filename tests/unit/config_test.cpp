#include "model/config.h"
#include "test_util.h"

namespace llamaq {
namespace {

const char* kLlama31 = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false,
 "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
 "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
 "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
 "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
 "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
 "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
 "vocab_size": 128256})";

TEST(LlamaConfig, ParsesTheLlama31Config) {
  const LlamaConfig c = parse_llama_config(kLlama31, "config.json");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(LlamaConfig, ParsesTheFixtureConfigs) {
  const LlamaConfig vocab = load_llama_config(test::model_dir("tiny-llama3-vocab") / "config.json");
  EXPECT_TRUE(vocab.tie_word_embeddings);
  EXPECT_EQ(vocab.eos_token_ids, (std::vector<int32_t>{128001, 128009}));
  EXPECT_EQ(vocab.rope_scaling.type, "default");
  const LlamaConfig sharded = load_llama_config(test::model_dir("tiny-hd128-sharded") / "config.json");
  EXPECT_EQ(sharded.head_dim, 128);
  const LlamaConfig nf4 = load_llama_config(test::model_dir("tiny-llama31-bnb-nf4-nodq") / "config.json");
  ASSERT_TRUE(nf4.quantization_config.has_value());
  EXPECT_EQ((*nf4.quantization_config)["bnb_4bit_quant_type"], "nf4");
}

TEST(LlamaConfig, ParsesTheTransformers5LayoutAndExplicitHeadDim) {
  // Llama 3.2-1B shape as transformers 5 writes it: rope_parameters, dtype, head_dim.
  const LlamaConfig c = parse_llama_config(R"({"model_type": "llama", "vocab_size": 128256,
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "dtype": "float16",
    "tie_word_embeddings": true, "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0,
    "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
    "rope_type": "llama3"}})", "c.json");
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.torch_dtype, DType::F16);
  EXPECT_TRUE(c.tie_word_embeddings);
  // The old "type" alias and default rope.
  const LlamaConfig old = parse_llama_config(R"({"vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})", "c.json");
  EXPECT_EQ(old.rope_scaling.type, "llama3");
  EXPECT_EQ(old.num_key_value_heads, 2);  // defaults to the attention heads
  EXPECT_EQ(old.rope_theta, 10000.0);     // transformers' default when absent
}

TEST(LlamaConfig, RejectsMalformedConfigsWithClearErrors) {
  const std::string base = R"("vocab_size": 10, "intermediate_size": 16, "num_hidden_layers": 1,
    "num_attention_heads": 2)";
  auto bad = [&](const std::string& extra, std::initializer_list<std::string> parts) {
    test::expect_error([&] { parse_llama_config("{" + base + ", " + extra + "}", "cfg.json"); },
                       parts);
  };
  test::expect_error([] { parse_llama_config("{\"vocab_size\": 1,", "cfg.json"); },
                     {"cfg.json", "invalid JSON"});
  test::expect_error([] { parse_llama_config("[1]", "cfg.json"); }, {"cfg.json", "object"});
  test::expect_error([&] { parse_llama_config("{" + base + "}", "cfg.json"); },
                     {"cfg.json", "missing required field \"hidden_size\""});
  bad(R"("hidden_size": NaN)", {"cfg.json", "invalid JSON"});  // Python's json writes NaN
  bad(R"("hidden_size": -8)", {"\"hidden_size\" = -8", "out of range"});
  bad(R"("hidden_size": 8.5)", {"\"hidden_size\" must be an integer"});
  bad(R"("hidden_size": "8")", {"\"hidden_size\" must be an integer"});
  bad(R"("hidden_size": 99999999999)", {"out of range"});
  bad(R"("hidden_size": 8, "num_key_value_heads": 3)", {"not a multiple"});
  bad(R"("hidden_size": 9)", {"not divisible"});
  bad(R"("hidden_size": 8, "rms_norm_eps": -1)", {"rms_norm_eps", "> 0"});
  bad(R"("hidden_size": 8, "rope_theta": 0)", {"rope_theta"});
  bad(R"("hidden_size": 8, "model_type": "mistral")", {"model_type \"mistral\""});
  bad(R"("hidden_size": 8, "hidden_act": "gelu")", {"hidden_act"});
  bad(R"("hidden_size": 8, "attention_bias": true)", {"attention_bias"});
  bad(R"("hidden_size": 8, "rope_scaling": {"rope_type": "yarn", "factor": 2})", {"\"yarn\""});
  bad(R"("hidden_size": 8, "rope_scaling": {"rope_type": "llama3", "factor": 8})",
      {"low_freq_factor"});
  bad(R"("hidden_size": 8, "eos_token_id": [1, -2])", {"eos_token_id"});
  bad(R"("hidden_size": 8, "torch_dtype": "int8")", {"torch_dtype"});
  bad(R"("hidden_size": 8, "head_dim": 3)", {"head_dim", "even"});
}

TEST(GenerationConfig, ReadsStopIdsAndSamplingDefaults) {
  const GenerationConfig g = parse_generation_config(
      R"({"bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128009],
          "temperature": 0.6, "top_p": 0.9})", "generation_config.json");
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{128001, 128009}));
  EXPECT_EQ(g.do_sample, true);
  EXPECT_EQ(g.temperature, 0.6);
  EXPECT_EQ(g.top_p, 0.9);
  EXPECT_FALSE(g.top_k.has_value());
  test::expect_error([] { parse_generation_config(R"({"temperature": -1})", "g.json"); },
                     {"g.json", "temperature"});
  EXPECT_TRUE(load_generation_config("/nonexistent/generation_config.json").eos_token_ids.empty());
}

}  // namespace
}  // namespace llamaq
