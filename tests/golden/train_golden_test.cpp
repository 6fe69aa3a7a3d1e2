// QLoRA training math against PEFT (tests/data/models/*/lora/reference.safetensors, float64):
// logits in train mode, the masked loss, every LoRA gradient and the weights after one AdamW
// step; and the gradient of the whole model against finite differences.
#include <nlohmann/json.hpp>

#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "lora_fixture.h"
#include "test_util.h"
#include "train/adamw.h"
#include "train/lora_model.h"

namespace llamaq {
namespace {

// fp32 against float64 through the whole model and its backward pass: the acceptance bound.
constexpr double kTolerance = 1e-4;

struct Fixture : test::LoraReferenceBatch {
  std::string name;
  LlamaConfig config;
  CheckpointTensors checkpoint;
  std::unique_ptr<LoraTrainModel> model;

  explicit Fixture(std::string model_name)
      : LoraReferenceBatch(test::model_dir(model_name)),
        name(std::move(model_name)),
        config(load_llama_config(test::model_dir(name) / "config.json")),
        checkpoint(CheckpointTensors::open(test::model_dir(name))) {
    model = std::make_unique<LoraTrainModel>(config, bind_llama_weights(config, checkpoint), 2);
    model->load_lora(load_peft_adapter(test::model_dir(name) / "lora"));
  }
};

class TrainGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainGolden, LossAndLoraGradientsMatchPeft) {
  Fixture f(GetParam());
  const double normalizer = double(f.targets());  // mean over the batch's unmasked targets
  double loss = 0;
  f.model->zero_grad();
  for (int64_t r = 0; r < 2; ++r) loss += f.model->accumulate_gradients(f.row("input_ids", r), f.row("labels", r), normalizer);
  loss /= normalizer;
  const double ref_loss = test::to_doubles(f.ref.tensor("loss"))[0];
  EXPECT_NEAR(loss, ref_loss, std::abs(ref_loss) * kTolerance);
  for (const LoraParam& p : f.model->params()) {
    for (const auto& [suffix, grad] : {std::pair{".lora_A.weight", &p.grad_a}, {".lora_B.weight", &p.grad_b}}) {
      const std::string key = "grad.base_model.model." + p.module + suffix;
      ASSERT_NE(f.ref.find(key), nullptr) << key;
      EXPECT_LE(test::relative_error(test::to_doubles(*grad), test::to_doubles(f.ref.tensor(key))), kTolerance) << key;
    }
  }
}

TEST_P(TrainGolden, TrainModeLogitsMatchPeft) {
  Fixture f(GetParam());
  const Tensor logits = f.ref.tensor("logits");
  const auto all = test::to_doubles(logits);
  const int64_t per_row = logits.dim(1) * logits.dim(2);
  for (int64_t r = 0; r < 2; ++r) {
    const auto got = f.model->logits(f.row("input_ids", r));
    EXPECT_LE(test::relative_error(std::vector<double>(got.begin(), got.end()),
                                   std::vector<double>(all.begin() + r * per_row, all.begin() + (r + 1) * per_row)),
              kTolerance);
  }
}

TEST_P(TrainGolden, OneAdamWStepMatchesTorch) {
  Fixture f(GetParam());
  const auto json = nlohmann::json::parse(test::read_bytes(test::model_dir(f.name) / "lora" / "reference.json"));
  const double normalizer = double(f.targets());
  f.model->zero_grad();
  for (int64_t r = 0; r < 2; ++r) f.model->accumulate_gradients(f.row("input_ids", r), f.row("labels", r), normalizer);
  std::vector<Tensor> params, grads;
  for (LoraParam& p : f.model->params()) {
    params.insert(params.end(), {p.a, p.b});
    grads.insert(grads.end(), {p.grad_a, p.grad_b});
  }
  AdamW optimizer(params);
  AdamWOptions options;
  options.beta1 = json["adamw"]["betas"][0];
  options.beta2 = json["adamw"]["betas"][1];
  options.eps = json["adamw"]["eps"];
  options.weight_decay = json["adamw"]["weight_decay"];
  optimizer.step(grads, json["adamw"]["lr"], options);
  for (const LoraParam& p : f.model->params()) {
    for (const auto& [suffix, value] : {std::pair{".lora_A.weight", &p.a}, {".lora_B.weight", &p.b}}) {
      const std::string key = "after_adamw.base_model.model." + p.module + suffix;
      EXPECT_LE(test::relative_error(test::to_doubles(*value), test::to_doubles(f.ref.tensor(key))), kTolerance) << key;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TrainGolden, ::testing::Values("tiny-llama31", "tiny-hd128-sharded"),
                         test::fixture_param_name);

class TrainGradients : public ::testing::TestWithParam<double> {};

TEST_P(TrainGradients, LoraGradientsMatchFiniteDifferencesThroughNf4) {
  // The whole backward pass over an NF4 base (dequantized tile by tile) against central
  // differences of the loss: the check that needs no reference implementation.
  const auto dir = test::model_dir("tiny-llama31");
  test::Nf4FixtureModel base(dir);
  const LlamaConfig& config = base.config;
  LlamaWeights& weights = base.weights;
  LoraTrainModel model(config, weights, 2);
  LoraConfig lora = parse_lora_config(R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
      "target_modules": "all-linear"})", "test");
  lora.lora_dropout = GetParam();  // the masks are fixed by the key, so the loss is a function
  model.init_lora(lora, 1);
  model.set_dropout_key(42);
  for (LoraParam& p : model.params()) {  // B = 0 would make every A gradient 0
    for (int64_t i = 0; i < p.b.numel(); ++i) p.b.data_as<float>()[i] = 0.05f * float((i * 37) % 11 - 5);
  }
  const std::vector<int32_t> ids = {1, 17, 300, 5, 42, 99, 7, 256, 3, 11};
  std::vector<int32_t> labels = ids;
  labels[0] = labels[1] = kIgnoreLabel;
  model.zero_grad();
  const double train_loss = model.accumulate_gradients(ids, labels, 1.0);
  // Dropout acts in training passes only: with it the training loss differs from the eval loss.
  EXPECT_EQ(train_loss == model.loss_sum(ids, labels), GetParam() == 0.0);
  // Snapshot the gradients: the finite-difference passes below accumulate more into them.
  std::vector<std::vector<double>> snapshot;
  for (LoraParam& p : model.params()) {
    snapshot.push_back(test::to_doubles(p.grad_a));
    snapshot.push_back(test::to_doubles(p.grad_b));
  }
  int checked = 0;
  for (size_t pi = 0; pi < model.params().size(); pi += 5) {
    LoraParam& p = model.params()[pi];
    for (Tensor* value : {&p.a, &p.b}) {
      const std::vector<double>& grad = snapshot[2 * pi + (value == &p.a ? 0 : 1)];
      const int64_t index = (int64_t(pi) * 7) % value->numel();
      float& x = value->data_as<float>()[index];
      const float saved = x;
      const float h = 1e-2f;
      // The training pass (with its dropout masks) gives the loss; its gradients are discarded.
      const auto training_loss = [&] {
        const double loss = model.accumulate_gradients(ids, labels, 1.0);
        return loss;
      };
      x = saved + h;
      const double up = training_loss();
      x = saved - h;
      const double down = training_loss();
      x = saved;
      const double numeric = (up - down) / (2 * h);
      const double analytic = grad[size_t(index)];
      // fp32 losses of ~5 differenced over 2h = 0.02: ~1e-5 absolute noise, plus the O(h^2)
      // truncation of central differences.
      EXPECT_NEAR(analytic, numeric, 2e-3 + 2e-2 * std::abs(numeric)) << p.module;
      ++checked;
    }
  }
  EXPECT_GE(checked, 8);
}

INSTANTIATE_TEST_SUITE_P(Dropout, TrainGradients, ::testing::Values(0.0, 0.3));

}  // namespace
}  // namespace llamaq
