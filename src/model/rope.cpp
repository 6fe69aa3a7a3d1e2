#include "model/rope.h"

#include <cmath>
#include <numbers>

namespace llamaq {
namespace {

// transformers `_compute_llama3_parameters`, element by element.
float llama3_scaled(float inv_freq, const RopeScaling& s) {
  const double low_freq_wavelen = double(s.original_max_position_embeddings) / s.low_freq_factor;
  const double high_freq_wavelen = double(s.original_max_position_embeddings) / s.high_freq_factor;
  const float wavelen = float(2 * std::numbers::pi) / inv_freq;
  if (wavelen < high_freq_wavelen) return inv_freq;
  if (wavelen > low_freq_wavelen) return float(inv_freq / s.factor);
  const float smooth = float((double(s.original_max_position_embeddings) / wavelen -
                              s.low_freq_factor) /
                             (s.high_freq_factor - s.low_freq_factor));
  return (1 - smooth) * float(inv_freq / s.factor) + smooth * inv_freq;
}

}  // namespace

std::vector<float> rope_inv_freq(const LlamaConfig& config) {
  const int64_t half = config.head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = float(2 * i) / float(config.head_dim);
    inv_freq[size_t(i)] = 1.0f / std::pow(float(config.rope_theta), exponent);
    if (config.rope_scaling.type == "llama3") {
      inv_freq[size_t(i)] = llama3_scaled(inv_freq[size_t(i)], config.rope_scaling);
    }
  }
  return inv_freq;
}

}  // namespace llamaq
