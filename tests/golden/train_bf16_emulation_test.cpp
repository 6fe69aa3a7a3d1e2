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
#include "test_util.h"
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

}  // namespace
}  // namespace llamaq
