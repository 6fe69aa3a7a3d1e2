#include <cmath>
#include <map>

#include "runtime/sampler.h"
#include "test_util.h"

namespace llamaq {
namespace {

// log-probabilities of a known distribution: 0.5, 0.25, 0.15, 0.1.
const std::vector<float> kLogits = {std::log(0.25f), std::log(0.5f), std::log(0.1f),
                                    std::log(0.15f)};

std::map<int32_t, double> frequencies(SamplingParams p, int draws) {
  Sampler sampler(p);
  std::map<int32_t, double> counts;
  for (int i = 0; i < draws; ++i) counts[sampler.sample(kLogits, {})] += 1.0 / draws;
  return counts;
}

TEST(Sampler, GreedyPicksTheArgmaxAndTheLowestIdOnTies) {
  Sampler greedy({});
  EXPECT_EQ(greedy.sample(kLogits, {}), 1);
  EXPECT_EQ(greedy.sample(std::vector<float>{1, 3, 3, 2}, {}), 1);
  EXPECT_EQ(argmax(std::vector<float>{-INFINITY, -1}), 1);
}

TEST(Sampler, DrawsFollowTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  const auto f = frequencies(p, 40000);
  // Standard error of a frequency over 40000 draws is <= 0.0025; 0.012 is ~5 sigma.
  EXPECT_NEAR(f.at(1), 0.5, 0.012);
  EXPECT_NEAR(f.at(0), 0.25, 0.012);
  EXPECT_NEAR(f.at(3), 0.15, 0.012);
  EXPECT_NEAR(f.at(2), 0.10, 0.012);
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  SamplingParams p;
  p.temperature = 0.5f;  // p^2 renormalised: 0.25/0.3525 for the top token
  const auto sharp = Sampler(p).distribution(kLogits, {});
  EXPECT_NEAR(sharp[0].probability, 0.25 / (0.25 + 0.0625 + 0.0225 + 0.01), 1e-6);
  p.temperature = 1000.0f;  // nearly uniform
  const auto flat = Sampler(p).distribution(kLogits, {});
  EXPECT_NEAR(flat[3].probability, 0.25, 1e-3);
}

TEST(Sampler, TopKTopPAndMinPTruncate) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1;  // top-k = 1 is greedy whatever the temperature
  EXPECT_EQ(Sampler(p).distribution(kLogits, {}).size(), 1u);
  EXPECT_EQ(frequencies(p, 100).size(), 1u);
  p.top_k = 2;
  auto d = Sampler(p).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[0].probability, 2.0 / 3.0, 1e-6);
  p.top_k = 0;
  p.top_p = 1.0f;  // off: everything stays
  EXPECT_EQ(Sampler(p).distribution(kLogits, {}).size(), 4u);
  p.top_p = 0.7f;  // 0.5 + 0.25 >= 0.7
  EXPECT_EQ(Sampler(p).distribution(kLogits, {}).size(), 2u);
  p.top_p = 0.45f;  // the top token alone has mass 0.5
  EXPECT_EQ(Sampler(p).distribution(kLogits, {}).size(), 1u);
  p.top_p = 1.0f;
  p.min_p = 0.25f;  // keep p >= 0.125: tokens 1, 0 and 3
  d = Sampler(p).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[2].id, 3);
  EXPECT_NEAR(d[2].probability, 0.15 / 0.9, 1e-6);
}

TEST(Sampler, RepetitionPenaltyFollowsTheHfRule) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  // Positive logits are divided, negative ones multiplied: token 1 (3 -> 1.5) loses to 2 (2).
  const std::vector<float> logits = {-1.0f, 3.0f, 2.0f};
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<int32_t>{1}), 2);
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<int32_t>{0}), 1);
  p.repeat_last_n = 1;  // only the last token of the history counts
  EXPECT_EQ(Sampler(p).sample(logits, std::vector<int32_t>{1, 0}), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(kLogits, out));
    return out;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
}

TEST(Sampler, RejectsBadParametersAndNaNLogits) {
  SamplingParams p;
  p.temperature = -1;
  test::expect_error([&] { Sampler s(p); }, {"temperature"});
  p = {};
  p.top_p = 0;
  test::expect_error([&] { Sampler s(p); }, {"top-p"});
  p = {};
  p.min_p = 1.5f;
  test::expect_error([&] { Sampler s(p); }, {"min-p"});
  p = {};
  p.repetition_penalty = 0;
  test::expect_error([&] { Sampler s(p); }, {"repetition penalty"});
  p = {};
  p.top_k = -1;
  test::expect_error([&] { Sampler s(p); }, {"top-k"});
  Sampler ok({});
  test::expect_error([&] { ok.sample(std::vector<float>{0, NAN}, {}); }, {"NaN"});
}

}  // namespace
}  // namespace llamaq
