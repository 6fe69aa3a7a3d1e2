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

// The candidates that survive the chain with their probabilities, renormalised. Sorted most
// likely first when `sorted` (or when top-p needed the order anyway); otherwise in id order, so
// a plain temperature draw over a 128k vocabulary needs no sort.
std::vector<TokenProbability> Sampler::candidates(std::span<const float> logits,
                                                  std::span<const int32_t> history,
                                                  bool sorted) const {
  check_finite(logits);
  const std::vector<float> scores = penalized(logits, history, params_);
  if (params_.temperature == 0.0f) return {{argmax(scores), 1.0f}};

  // Unnormalised probabilities exp((s - max) / T); the top token has weight exactly 1.
  const float max_score = scores[size_t(argmax(scores))];
  std::vector<TokenProbability> c(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    c[i] = {int32_t(i), std::exp((scores[i] - max_score) / params_.temperature)};
  }
  const auto more_likely = [](const TokenProbability& a, const TokenProbability& b) {
    return a.probability > b.probability || (a.probability == b.probability && a.id < b.id);
  };
  if (params_.top_k > 0 && size_t(params_.top_k) < c.size()) {
    std::nth_element(c.begin(), c.begin() + params_.top_k, c.end(), more_likely);
    c.resize(size_t(params_.top_k));
  }
  double total = 0;  // mass of the top-k survivors: what top-p measures against
  for (const auto& t : c) total += t.probability;
  // min-p and top-p both keep a most-likely prefix, so min-p can filter first without changing
  // the result, as long as top-p's total is taken before it.
  if (params_.min_p > 0.0f) {
    std::erase_if(c, [&](const TokenProbability& t) { return t.probability < params_.min_p; });
  }
  if (params_.top_p < 1.0f) {
    // Sort a growing prefix until it holds the top-p mass: usually a few hundred tokens.
    for (size_t m = std::min<size_t>(c.size(), 256);; m = std::min(c.size(), m * 4)) {
      std::partial_sort(c.begin(), c.begin() + ptrdiff_t(m), c.end(), more_likely);
      double mass = 0;
      size_t keep = 0;
      while (keep < m && mass < params_.top_p * total) mass += c[keep++].probability;
      if (mass >= params_.top_p * total || m == c.size()) {
        c.resize(keep);
        sorted = false;  // already in order
        break;
      }
    }
  }
  if (sorted) std::sort(c.begin(), c.end(), more_likely);
  double kept = 0;
  for (const auto& t : c) kept += t.probability;
  for (auto& t : c) t.probability = float(t.probability / kept);
  return c;
}

std::vector<TokenProbability> Sampler::distribution(std::span<const float> logits,
                                                    std::span<const int32_t> history) const {
  return candidates(logits, history, /*sorted=*/true);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const std::vector<TokenProbability> dist = candidates(logits, history, /*sorted=*/false);
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
