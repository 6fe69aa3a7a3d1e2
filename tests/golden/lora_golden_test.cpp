// LoRA adapters against the PEFT references in tests/data/models/*/lora: logits with the adapter
// (eval mode), merged logits, adapter save/load round trip and bad adapters.
#include "backend/cpu/cpu_backend.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "model/lora.h"
#include "test_util.h"

namespace llamaq {
namespace {

// fp32 compute against PEFT's float64 reference (bf16 base, fp32 adapters): as the golden tests.
constexpr double kTolerance = 1e-4;

struct Case {
  std::unique_ptr<Backend> backend = make_cpu_backend(2, cpu::Isa::Reference);
  std::string model;
  SafetensorsFile ref;
  explicit Case(std::string name)
      : model(std::move(name)),
        ref(SafetensorsFile::open(test::model_dir(model) / "lora" / "reference.safetensors")) {}

  std::vector<int32_t> ids(int64_t row) const {
    const auto all = test::to_doubles(ref.tensor("input_ids"));
    const int64_t len = ref.tensor("input_ids").dim(1);
    return {all.begin() + row * len, all.begin() + (row + 1) * len};
  }
  std::vector<double> expected(const std::string& name, int64_t row) const {
    const Tensor t = ref.tensor(name);
    const auto all = test::to_doubles(t);
    const int64_t per_row = t.dim(1) * t.dim(2);
    return {all.begin() + row * per_row, all.begin() + (row + 1) * per_row};
  }
};

std::vector<double> logits(LlamaModel& model, Backend& backend, const std::vector<int32_t>& ids) {
  KvCache cache(backend, model.config(), int64_t(ids.size()));
  const auto l = model.forward_to_host(cache, cache.add_sequence(), ids, LogitsFor::AllTokens);
  return {l.begin(), l.end()};
}

class LoraGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraGolden, AdapterLogitsMatchPeft) {
  Case c(GetParam());
  LoadOptions options;
  options.lora_dir = test::model_dir(c.model) / "lora";
  LoadedModel loaded = load_model(test::model_dir(c.model), *c.backend, {}, options);
  for (int64_t row = 0; row < 2; ++row) {
    EXPECT_LE(test::relative_error(logits(*loaded.model, *c.backend, c.ids(row)),
                                   c.expected("logits_eval", row)),
              kTolerance)
        << "sequence " << row;
  }
}

TEST_P(LoraGolden, MergedWeightsMatchPeftMergeAndUnload) {
  Case c(GetParam());
  const auto dir = test::model_dir(c.model);
  const LlamaConfig config = load_llama_config(dir / "config.json");
  const CheckpointTensors checkpoint = CheckpointTensors::open(dir);
  ThreadPool pool(2);
  for (DType dtype : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)));
    LlamaWeights weights = bind_llama_weights(config, checkpoint);
    attach_lora(weights, load_peft_adapter(dir / "lora"));
    merge_lora(weights, dtype, pool);
    LlamaModel model(config, weights, *c.backend);
    // f32: the merged weight is exact to fp32 rounding. bf16: rounding every merged weight to
    // bf16 (relative 2^-9 each) moves these random-weight models' logits by 1.8e-2
    // (tiny-llama31) and 2.5e-2 (tiny-hd128-sharded), measured; a wrong merge (missing scale,
    // transposed B A) gives errors of order 1.
    const double bound = dtype == DType::F32 ? kTolerance : 5e-2;
    EXPECT_LE(test::relative_error(logits(model, *c.backend, c.ids(1)), c.expected("logits_merged", 1)),
              bound);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraGolden, ::testing::Values("tiny-llama31", "tiny-hd128-sharded"),
                         test::fixture_param_name);

TEST(PeftAdapter, SaveLoadRoundTrip) {
  const PeftAdapter original = load_peft_adapter(test::model_dir("tiny-llama31") / "lora");
  EXPECT_EQ(original.config.r, 4);
  EXPECT_EQ(original.config.scaling_for("model.layers.0.self_attn.q_proj"), 2.0);
  EXPECT_EQ(original.modules.size(), 21u);
  test::TempDir dir;
  save_peft_adapter(dir.path(), original.config, original.modules);
  const PeftAdapter copy = load_peft_adapter(dir.path());
  EXPECT_EQ(copy.config.r, original.config.r);
  EXPECT_EQ(copy.config.lora_alpha, original.config.lora_alpha);
  EXPECT_EQ(copy.config.target_modules.size(), 7u);
  for (const auto& [name, t] : original.modules) {
    ASSERT_TRUE(copy.modules.count(name)) << name;
    EXPECT_EQ(test::to_doubles(copy.modules.at(name).a), test::to_doubles(t.a));
    EXPECT_EQ(test::to_doubles(copy.modules.at(name).b), test::to_doubles(t.b));
  }
  const auto cfg = nlohmann::json::parse(test::read_bytes(dir / "adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["inference_mode"], true);
}

TEST(PeftAdapter, TargetMatchingFollowsPeft) {
  LoraConfig c = parse_lora_config(R"({"peft_type": "LORA", "r": 16, "lora_alpha": 32,
    "use_rslora": true, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 8},
    "layers_to_transform": [1]})", "a.json");
  EXPECT_TRUE(c.targets("model.layers.1.self_attn.q_proj"));
  EXPECT_FALSE(c.targets("model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(c.targets("model.layers.1.self_attn.k_proj"));
  EXPECT_EQ(c.rank_for("model.layers.1.self_attn.v_proj"), 8);
  EXPECT_EQ(c.scaling_for("model.layers.1.self_attn.q_proj"), 32.0 / 4.0);  // rsLoRA: alpha/sqrt(r)
  c = parse_lora_config(R"({"peft_type": "LORA", "target_modules": "all-linear"})", "a.json");
  EXPECT_TRUE(c.targets("model.layers.3.mlp.down_proj"));
  EXPECT_FALSE(c.targets("lm_head"));
  c = parse_lora_config(R"({"peft_type": "LORA", "target_modules": ".*\\.(q|v)_proj"})", "a.json");
  EXPECT_TRUE(c.targets("model.layers.3.self_attn.v_proj"));
  EXPECT_FALSE(c.targets("model.layers.3.self_attn.o_proj"));
}

TEST(PeftAdapter, BadAdaptersAreReportedClearly) {
  test::expect_error([] { parse_lora_config(R"({"peft_type": "IA3"})", "a.json"); }, {"a.json", "IA3"});
  test::expect_error([] { parse_lora_config(R"({"peft_type": "LORA", "use_dora": true})", "a.json"); },
                     {"use_dora", "not supported"});
  test::expect_error([] { parse_lora_config(R"({"peft_type": "LORA", "r": "4"})", "a.json"); },
                     {"a.json", "wrong type"});
  test::expect_error([] { parse_lora_config(R"({"peft_type": "LORA", "target_modules": "(("})", "a.json"); },
                     {"regular expression"});
  test::expect_error([] { load_peft_adapter("/nonexistent"); }, {"adapter_config.json", "missing"});
  // An adapter made for another model: shapes do not fit.
  const auto dir = test::model_dir("tiny-llama31");
  const LlamaConfig config = load_llama_config(test::model_dir("tiny-hd128-sharded") / "config.json");
  const CheckpointTensors checkpoint = CheckpointTensors::open(test::model_dir("tiny-hd128-sharded"));
  LlamaWeights weights = bind_llama_weights(config, checkpoint);
  test::expect_error([&] { attach_lora(weights, load_peft_adapter(dir / "lora")); },
                     {"adapter_model.safetensors", "do not fit"});
}

}  // namespace
}  // namespace llamaq
