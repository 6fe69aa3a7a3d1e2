#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "core/error.h"

namespace llamaq {
namespace {

void check_finite(std::span<const float> logits) {
  for (float x : logits) {
    if (std::isnan(x)) fail("sampler: the model produced NaN logits");
  }
}

std::vector<float> penalized(std::span<const float> logits, std::span<const int32_t> history,
                             const SamplingParams& p) {
  std::vector<float> out(logits.begin(), logits.end());
  if (p.repetition_penalty == 1.0f) return out;
  const size_t window = p.repeat_last_n > 0 ? std::min(history.size(), size_t(p.repeat_last_n))
                                            : history.size();
  std::unordered_set<int32_t> seen(history.end() - ptrdiff_t(window), history.end());
  for (int32_t id : seen) {
    if (id < 0 || size_t(id) >= out.size()) continue;
    float& x = out[size_t(id)];
    x = x > 0 ? x / p.repetition_penalty : x * p.repetition_penalty;
  }
  return out;
}

}  // namespace

void validate(const SamplingParams& p) {
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature)) {
    fail("temperature must be >= 0 (0 = greedy), got {}", p.temperature);
  }
  if (p.top_k < 0) fail("top-k must be >= 0 (0 = off), got {}", p.top_k);
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("top-p must be in (0, 1], got {}", p.top_p);
  if (!(p.min_p >= 0 && p.min_p <= 1)) fail("min-p must be in [0, 1], got {}", p.min_p);
  if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty)) {
    fail("repetition penalty must be > 0 (1 = off), got {}", p.repetition_penalty);
  }
  if (p.repeat_last_n < 0) fail("repeat-last-n must be >= 0, got {}", p.repeat_last_n);
}

int32_t argmax(std::span<const float> values) {
  if (values.empty()) fail("argmax of an empty vector");
  return int32_t(std::max_element(values.begin(), values.end()) - values.begin());
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  validate(params_);
}

std::vector<TokenProbability> Sampler::distribution(std::span<const float> logits,
                                                    std::span<const int32_t> history) const {
  check_finite(logits);
  const std::vector<float> scores = penalized(logits, history, params_);
  if (params_.temperature == 0.0f) return {{argmax(scores), 1.0f}};

  std::vector<TokenProbability> c(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) c[i] = {int32_t(i), scores[i] / params_.temperature};
  const auto by_score = [](const TokenProbability& a, const TokenProbability& b) {
    return a.probability > b.probability || (a.probability == b.probability && a.id < b.id);
  };
  const size_t keep_k =
      params_.top_k > 0 ? std::min(c.size(), size_t(params_.top_k)) : c.size();
  std::partial_sort(c.begin(), c.begin() + ptrdiff_t(keep_k), c.end(), by_score);
  c.resize(keep_k);

  // Softmax over the survivors of top-k, in double for a stable normalisation.
  const double max_score = c.front().probability;
  double total = 0;
  std::vector<double> p(c.size());
  for (size_t i = 0; i < c.size(); ++i) total += p[i] = std::exp(double(c[i].probability) - max_score);
  size_t keep = c.size();
  if (params_.top_p < 1.0f) {
    double mass = 0;
    for (size_t i = 0; i < c.size(); ++i) {
      mass += p[i] / total;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    const double floor = params_.min_p * p[0];
    size_t i = 1;
    while (i < keep && p[i] >= floor) ++i;
    keep = i;
  }
  double kept_total = 0;
  for (size_t i = 0; i < keep; ++i) kept_total += p[i];
  c.resize(keep);
  for (size_t i = 0; i < keep; ++i) c[i].probability = float(p[i] / kept_total);
  return c;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const std::vector<TokenProbability> dist = distribution(logits, history);
  if (dist.size() == 1) return dist[0].id;
  // A uniform double in [0, 1) from 53 random bits: identical on every platform.
  const double u = double(rng_() >> 11) * 0x1.0p-53;
  double cumulative = 0;
  for (const TokenProbability& t : dist) {
    cumulative += t.probability;
    if (u < cumulative) return t.id;
  }
  return dist.back().id;
}

}  // namespace llamaq
