// Sampler chain: repetition penalty -> temperature -> top-k -> top-p -> min-p -> seeded draw.
// Temperature 0 is greedy (argmax; ties go to the lowest id). Same seed, same tokens.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace llamaq {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off; keep the smallest set of mass >= top_p
  float min_p = 0.0f;               // 0 = off; keep p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1 = off; HF/CTRL rule on tokens seen in the window
  int32_t repeat_last_n = 64;       // penalty window over the history; 0 = whole history
  uint64_t seed = 0;
};

// Throws llamaq::Error naming the parameter when a value is out of range.
void validate(const SamplingParams& params);

struct TokenProbability {
  int32_t id;
  float probability;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token. `history` is the sequence so far (prompt + generated).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

  // The distribution the draw is made from (after the whole chain), most likely first.
  // For greedy sampling, the single argmax with probability 1.
  std::vector<TokenProbability> distribution(std::span<const float> logits,
                                             std::span<const int32_t> history) const;

 private:
  std::vector<TokenProbability> candidates(std::span<const float> logits,
                                           std::span<const int32_t> history, bool sorted) const;

  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest value; ties go to the lowest index.
int32_t argmax(std::span<const float> values);

}  // namespace llamaq
