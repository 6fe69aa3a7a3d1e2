// Perplexity against the float64 reference logits of a fixture, window bookkeeping, and KL.
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "runtime/perplexity.h"
#include "test_util.h"

namespace llamaq {
namespace {

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend(2, cpu::Isa::Reference);
  LoadedModel loaded = load_model(test::model_dir("tiny-llama31"), *backend);
  SafetensorsFile ref = SafetensorsFile::open(test::model_dir("tiny-llama31") / "reference.safetensors");
  std::vector<int32_t> ids() const {
    const auto d = test::to_doubles(ref.tensor("input_ids_300"));
    return {d.begin(), d.end()};
  }
};

// exp(mean NLL) from the reference logits, in double.
double reference_perplexity(const Fixture& f) {
  const auto logits = test::to_doubles(f.ref.tensor("logits_300"));
  const auto ids = f.ids();
  const int64_t vocab = f.loaded.config.vocab_size;
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const double* row = logits.data() + t * size_t(vocab);
    double max = row[0], sum = 0;
    for (int64_t i = 0; i < vocab; ++i) max = std::max(max, row[i]);
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - max);
    nll += max + std::log(sum) - row[ids[t + 1]];
  }
  return std::exp(nll / double(ids.size() - 1));
}

TEST(Perplexity, OneWindowEqualsTheReference) {
  Fixture f;
  const auto r = evaluate_perplexity(*f.loaded.model, f.ids(), {.ctx = 300, .stride = 0, .batch = 64});
  EXPECT_EQ(r.windows, 1);
  EXPECT_EQ(r.scored, 299);
  // Logits agree to ~3e-7 relative, so the mean NLL agrees to about that too.
  EXPECT_NEAR(r.perplexity(), reference_perplexity(f), reference_perplexity(f) * 1e-5);
}

TEST(Perplexity, SlidingWindowsScoreEveryTokenOnce) {
  Fixture f;
  const auto ids = f.ids();
  const auto disjoint = evaluate_perplexity(*f.loaded.model, ids, {.ctx = 64, .stride = 0, .batch = 16});
  EXPECT_EQ(disjoint.scored, 299);
  EXPECT_EQ(disjoint.windows, 5);  // 300 tokens in windows of 64
  const auto sliding = evaluate_perplexity(*f.loaded.model, ids, {.ctx = 64, .stride = 16, .batch = 7});
  EXPECT_EQ(sliding.scored, 299);
  EXPECT_EQ(sliding.windows, 16);  // windows start at 0, 16, ..., 240 (covers token 299)
  // More context per token can only help a little on random weights; the values stay close.
  EXPECT_NEAR(sliding.perplexity(), disjoint.perplexity(), disjoint.perplexity() * 0.2);
}

TEST(Perplexity, KlAgainstItselfIsZero) {
  Fixture f;
  const auto r = evaluate_perplexity(*f.loaded.model, f.ids(), {.ctx = 100, .stride = 50, .batch = 32},
                                     f.loaded.model.get());
  EXPECT_NEAR(r.mean_kl(), 0.0, 1e-9);  // identical logits: only rounding of the log-sum-exp
  EXPECT_EQ(r.top1_agreement(), 1.0);
}

TEST(Perplexity, RejectsBadSettings) {
  Fixture f;
  const auto ids = f.ids();
  test::expect_error([&] { evaluate_perplexity(*f.loaded.model, std::span(ids).first(1), {}); },
                     {"at least 2"});
  test::expect_error([&] { evaluate_perplexity(*f.loaded.model, ids, {.ctx = 10, .stride = 20}); },
                     {"stride 20 is larger than the context 10"});
}

}  // namespace
}  // namespace llamaq
