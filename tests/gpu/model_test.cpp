// The whole model on the GPU: every golden fixture (bf16, and bitsandbytes NF4 with and without
// double quantization) loaded through load_model(dir, cuda backend), logits against the float64
// reference, incremental decoding through the paged cache (the decode kernels), and greedy
// generation against the CPU backend's.
// Bound: each linear rounds its f32 input to bf16 (2^-9 relative per element) for the GEMM; an
// emulation of exactly that on the CPU gives row errors of 1.5e-3 to 5.6e-3 on these fixtures
// (the fused NF4 GEMV and f32 paths add only fp32 noise), so 1e-2 is the bf16-operand bound.
// Greedy tokens are compared up to the reference's first step whose top-2 margin is < 1e-2.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "gpu_test_support.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "runtime/generate.h"
#include "test_util.h"

namespace llamaq {
namespace {

using gpu_test::relative_error;

constexpr double kLogitsTolerance = 1e-2;
constexpr double kMarginFloor = 1e-2;

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

std::vector<double> doubles(const Tensor& t) {
  std::vector<double> out(size_t(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (t.dtype()) {
      case DType::F64:
        out[i] = t.data_as<const double>()[i];
        break;
      case DType::I64:
        out[i] = double(t.data_as<const int64_t>()[i]);
        break;
      case DType::I32:
        out[i] = t.data_as<const int32_t>()[i];
        break;
      default:
        out[i] = t.data_as<const float>()[i];
        break;
    }
  }
  return out;
}

std::vector<double> row(const std::vector<double>& m, int64_t r, int64_t width) {
  return {m.begin() + r * width, m.begin() + (r + 1) * width};
}

class GpuGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LLAMAQ_REQUIRE_CUDA_DEVICE();
    backends_ = gpu_test::make_backends();
    dir_ = gpu_test::model_dir(GetParam());
    loaded_ = load_model(dir_, *backends_.gpu);
    reference_ =
        std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir_ / "reference.safetensors"));
    json_ = read_json(dir_ / "reference.json");
  }
  void TearDown() override { RecordProperty("max_relative_error", std::to_string(worst_)); }

  std::vector<int64_t> lengths() const {
    if (json_.contains("seq_lens")) return json_["seq_lens"].get<std::vector<int64_t>>();
    return {1, 7, 64, 300};
  }
  std::vector<int32_t> ids(int64_t length) const {
    const auto v = doubles(reference_->tensor("input_ids_" + std::to_string(length)));
    return {v.begin(), v.end()};
  }
  bool all_positions(int64_t length) const {
    return reference_->find("logits_" + std::to_string(length)) != nullptr;
  }
  std::vector<double> expected(int64_t length) const {
    const std::string all = "logits_" + std::to_string(length);
    return doubles(
        reference_->tensor(all_positions(length) ? all : "logits_last_" + std::to_string(length)));
  }
  void expect_close(const std::vector<float>& got, const std::vector<double>& want, int64_t r,
                    const std::string& where) {
    const int64_t vocab = loaded_.config.vocab_size;
    const double error =
        relative_error(row(std::vector<double>(got.begin(), got.end()), r, vocab), want);
    worst_ = std::max(worst_, error);
    EXPECT_LE(error, kLogitsTolerance) << where;
  }

  gpu_test::Backends backends_;
  std::filesystem::path dir_;
  LoadedModel loaded_;
  std::unique_ptr<SafetensorsFile> reference_;
  nlohmann::json json_;
  double worst_ = 0;
};

TEST_P(GpuGolden, LogitsMatchTheReference) {
  const int64_t vocab = loaded_.config.vocab_size;
  for (int64_t length : lengths()) {
    KvCache cache(*backends_.gpu, loaded_.config, length);
    const bool all = all_positions(length);
    const auto logits =
        loaded_.model->forward_to_host(cache, cache.add_sequence(), ids(length),
                                       all ? LogitsFor::AllTokens : LogitsFor::LastToken);
    const auto want = expected(length);
    ASSERT_EQ(logits.size(), want.size());
    for (int64_t r = 0; r < int64_t(want.size()) / vocab; ++r) {
      expect_close(logits, row(want, r, vocab), r,
                   "length " + std::to_string(length) + " row " + std::to_string(r));
    }
  }
}

TEST_P(GpuGolden, IncrementalDecodeMatchesTheReference) {
  const int64_t length = 64;
  const int64_t vocab = loaded_.config.vocab_size;
  const std::vector<int32_t> all_ids = ids(length);
  const auto want = expected(length);
  const bool all = all_positions(length);
  KvCache cache(*backends_.gpu, loaded_.config, length, /*block_size=*/16);
  const int seq = cache.add_sequence();
  const int64_t prefill = 5;
  loaded_.model->forward(cache, seq, std::span(all_ids).first(size_t(prefill)),
                         LogitsFor::LastToken);
  for (int64_t t = prefill; t < length; ++t) {
    const auto logits = loaded_.model->forward_to_host(
        cache, seq, std::span(all_ids).subspan(size_t(t), 1), LogitsFor::LastToken);
    if (!all && t != length - 1) continue;
    expect_close(logits, all ? row(want, t, vocab) : want, 0, "position " + std::to_string(t));
  }
}

// The fixtures with greedy references (the NF4 fixtures have none).
class GpuGreedy : public GpuGolden {};

TEST_P(GpuGreedy, GreedyGenerationEqualsTheCpu) {
  ASSERT_TRUE(json_.contains("greedy"));
  LoadedModel on_cpu = load_model(dir_, *backends_.cpu);
  for (const auto& item : json_["greedy"]) {
    const auto prompt = item["prompt"].get<std::vector<int32_t>>();
    const auto want = item["new_tokens"].get<std::vector<int32_t>>();
    const auto margins = item["top2_margins"].get<std::vector<double>>();
    SCOPED_TRACE("prompt of " + std::to_string(prompt.size()) + " tokens");
    GenerateOptions options;
    options.max_new_tokens = int64_t(want.size());
    options.prefill_chunk = 7;
    const auto run = [&](LoadedModel& m, Backend& backend) {
      KvCache cache(backend, m.config, int64_t(prompt.size() + want.size()));
      return generate(*m.model, cache, cache.add_sequence(), prompt, options, {}).tokens;
    };
    const auto gpu_tokens = run(loaded_, *backends_.gpu);
    const auto cpu_tokens = run(on_cpu, *backends_.cpu);
    size_t compared = 0;
    for (size_t i = 0; i < want.size() && margins[i] >= kMarginFloor; ++i, ++compared) {
      ASSERT_LT(i, gpu_tokens.size());
      ASSERT_LT(i, cpu_tokens.size());
      ASSERT_EQ(gpu_tokens[i], cpu_tokens[i]) << "step " << i;
      EXPECT_EQ(gpu_tokens[i], want[i]) << "step " << i;
    }
    EXPECT_GT(compared, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuGolden,
                         ::testing::Values("tiny-llama31", "tiny-hd128-sharded",
                                           "tiny-llama3-vocab", "tiny-hd128-sharded-bnb-nf4",
                                           "tiny-llama31-bnb-nf4-nodq"),
                         test::fixture_param_name);

INSTANTIATE_TEST_SUITE_P(Fixtures, GpuGreedy,
                         ::testing::Values("tiny-llama31", "tiny-hd128-sharded", "tiny-llama3-vocab"),
                         test::fixture_param_name);

TEST(GpuNf4, QuantizeOnLoadMatchesTheCpu) {
  LLAMAQ_REQUIRE_CUDA_DEVICE();
  auto backends = gpu_test::make_backends();
  LoadOptions options;
  options.quantize_nf4 = true;
  const auto dir = gpu_test::model_dir("tiny-hd128-sharded");
  LoadedModel gpu = load_model(dir, *backends.gpu, {}, options);
  LoadedModel cpu = load_model(dir, *backends.cpu, {}, options);
  const auto reference = SafetensorsFile::open(dir / "reference.safetensors");
  const auto v = doubles(reference.tensor("input_ids_64"));
  const std::vector<int32_t> ids(v.begin(), v.end());
  const auto logits = [&](LoadedModel& m, Backend& backend) {
    KvCache cache(backend, m.config, 64);
    const auto l = m.model->forward_to_host(cache, cache.add_sequence(), ids, LogitsFor::AllTokens);
    return std::vector<double>(l.begin(), l.end());
  };
  const double error = relative_error(logits(gpu, *backends.gpu), logits(cpu, *backends.cpu));
  RecordProperty("relative_error", std::to_string(error));
  EXPECT_LE(error, kLogitsTolerance);
}

}  // namespace
}  // namespace llamaq
