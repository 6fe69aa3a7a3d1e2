// What the GPU's bf16 roundings cost in QLoRA training, measured on the CPU: the LoRA fixtures
// run on the CPU backend with the CUDA backend's roundings emulated
// (tests/bf16_emulating_backend.h), against PEFT's float64 references. Each rounding alone and both
// together; the errors are printed and recorded, and tests/gpu/train_model_test.cpp bounds the GPU
// by the same emulation. Checked here: the emulated arithmetic without its rounding meets the fp32
// bound (the emulation itself is right), and with it the errors are well above fp32 noise (the
// roundings take effect).
#include <cmath>

#include "bf16_emulating_backend.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "lora_fixture.h"
#include "test_util.h"
#include "train/adamw.h"
#include "train/lora_model.h"

namespace llamaq {
namespace {

using test::Bf16EmulatingBackend;
using test::Bf16Rounding;

// fp32 against float64 through the model and its backward pass, as train_golden_test.cpp.
constexpr double kFp32Tolerance = 1e-4;
// A bf16 rounding (2^-9 relative) that takes effect moves the gradients far above fp32 noise.
constexpr double kRoundingVisible = 1e-3;

struct Errors {
  double loss = 0, logits = 0, gradient = 0;
};

Errors measure(const std::string& name, Bf16Rounding rounding) {
  const auto dir = test::model_dir(name);
  const LlamaConfig config = load_llama_config(dir / "config.json");
  const CheckpointTensors checkpoint = CheckpointTensors::open(dir);
  const SafetensorsFile ref = SafetensorsFile::open(dir / "lora" / "reference.safetensors");
  Bf16EmulatingBackend backend(rounding);
  LoraTrainModel model(config, bind_llama_weights(config, checkpoint), backend);
  model.load_lora(load_peft_adapter(dir / "lora"));
  const auto row = [&](const std::string& tensor, int64_t r) {
    const Tensor t = ref.tensor(tensor);
    const auto all = test::to_doubles(t);
    return std::vector<int32_t>(all.begin() + r * t.dim(1), all.begin() + (r + 1) * t.dim(1));
  };
  double targets = 0;
  for (int64_t r = 0; r < 2; ++r) {
    const auto labels = row("labels", r);
    for (size_t t = 1; t < labels.size(); ++t)
      targets += labels[t] != kIgnoreLabel;
  }
  Errors e;
  const Tensor logits = ref.tensor("logits");
  const auto all_logits = test::to_doubles(logits);
  const int64_t per_row = logits.dim(1) * logits.dim(2);
  for (int64_t r = 0; r < 2; ++r) {
    const auto got = model.logits(row("input_ids", r));
    e.logits = std::max(e.logits, test::relative_error(
                                      std::vector<double>(got.begin(), got.end()),
                                      std::vector<double>(all_logits.begin() + r * per_row,
                                                          all_logits.begin() + (r + 1) * per_row)));
  }
  model.zero_grad();
  double loss = 0;
  for (int64_t r = 0; r < 2; ++r)
    loss += model.accumulate_gradients(row("input_ids", r), row("labels", r), targets);
  const double ref_loss = test::to_doubles(ref.tensor("loss"))[0];
  e.loss = std::abs(loss / targets - ref_loss) / ref_loss;
  for (const LoraParam& p : model.params()) {
    for (const auto& [suffix, grad] :
         {std::pair{".lora_A.weight", &p.grad_a}, {".lora_B.weight", &p.grad_b}}) {
      const std::string key = "grad.base_model.model." + p.module + suffix;
      const double error =
          test::relative_error(test::to_doubles(*grad), test::to_doubles(ref.tensor(key)));
      e.gradient = std::max(e.gradient, error);
    }
  }
  std::cout << "[ info ] " << name << " rounding gemm inputs " << rounding.gemm_inputs
            << ", attention " << rounding.attention << ", values rounded " << rounding.values
            << ": loss " << e.loss << ", logits " << e.logits << ", worst LoRA gradient "
            << e.gradient << " (relative to PEFT)\n";
  return e;
}

class TrainBf16Emulation : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainBf16Emulation, EmulatedArithmeticWithoutRoundingMeetsTheFp32Bound) {
  const Errors e = measure(GetParam(), {false, true, false});
  EXPECT_LE(e.loss, kFp32Tolerance);
  EXPECT_LE(e.logits, kFp32Tolerance);
  EXPECT_LE(e.gradient, kFp32Tolerance);
}

TEST_P(TrainBf16Emulation, RoundingsOfTheGpu) {
  const Errors gemm = measure(GetParam(), {true, false});
  const Errors attention = measure(GetParam(), {false, true});
  const Errors both = measure(GetParam(), {true, true});
  RecordProperty("gemm_gradient_error", std::to_string(gemm.gradient));
  RecordProperty("attention_gradient_error", std::to_string(attention.gradient));
  RecordProperty("gradient_error", std::to_string(both.gradient));
  RecordProperty("logits_error", std::to_string(both.logits));
  RecordProperty("loss_error", std::to_string(both.loss));
  EXPECT_GT(gemm.gradient, kRoundingVisible);
  EXPECT_GT(both.gradient, kRoundingVisible);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TrainBf16Emulation,
                         ::testing::Values("tiny-llama31", "tiny-hd128-sharded"),
                         test::fixture_param_name);

// The few QLoRA steps of tests/gpu/train_model_test.cpp's FewNf4StepsMatchTheCpu (NF4 base,
// dropout, clipping, AdamW at 1e-2) in fp32 and with the GPU's roundings: the per-step losses
// printed show how far bf16 rounding alone moves them as Adam's steps compound; both runs must
// still drive the loss down.
TEST(TrainBf16EmulationSteps, Nf4StepsUnderRounding) {
  const auto dir = test::model_dir("tiny-llama31");
  test::Nf4FixtureModel base(dir);
  const LlamaConfig& config = base.config;
  LlamaWeights& weights = base.weights;
  const LoraConfig lora = parse_lora_config(R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
      "lora_dropout": 0.1, "target_modules": "all-linear"})",
                                            "test");
  const std::vector<int32_t> ids = {1, 17, 300, 5, 42, 99, 7, 256, 3, 11, 64, 128, 200, 31, 2};
  std::vector<int32_t> labels = ids;
  labels[0] = labels[1] = kIgnoreLabel;
  std::vector<double> losses[2];
  for (int run = 0; run < 2; ++run) {
    Bf16EmulatingBackend backend({.gemm_inputs = run == 1, .attention = run == 1});
    LoraTrainModel model(config, weights, backend);
    model.init_lora(lora, 3);
    std::vector<Tensor> params, grads;
    for (LoraParam& p : model.params()) {
      params.insert(params.end(), {p.a, p.b});
      grads.insert(grads.end(), {p.grad_a, p.grad_b});
    }
    AdamW optimizer(backend, params);
    AdamWOptions options;
    options.lr = 1e-2;
    for (int step = 0; step < 5; ++step) {
      model.zero_grad();
      model.set_dropout_key(uint64_t(step));
      losses[run].push_back(model.accumulate_gradients(ids, labels, 13.0) / 13.0);
      clip_grad_norm(backend, grads, 1.0);
      optimizer.step(grads, options.lr, options);
    }
    EXPECT_LT(losses[run].back(), losses[run].front()) << "run " << run;
    const std::vector<float> z = model.logits(ids);
    double sum = 0;
    for (const float v : z)
      sum += double(v) * v;
    std::cout << "[ info ] run " << run << ": final logits rms "
              << std::sqrt(sum / double(z.size())) << "\n";
  }
  for (size_t s = 0; s < losses[0].size(); ++s) {
    std::cout << "[ info ] step " << s + 1 << ": fp32 loss " << losses[0][s] << ", emulated bf16 "
              << losses[1][s] << ", relative difference "
              << std::abs(losses[1][s] - losses[0][s]) / losses[0][s] << "\n";
  }
}

}  // namespace
}  // namespace llamaq
