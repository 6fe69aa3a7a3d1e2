// bitsandbytes' signed 8-bit "dynamic" map (functional.py::create_dynamic_map with
// max_exponent_bits=7, total_bits=8), reproduced bit for bit as torch 2.x computes it in float32
// (specs §1.7). It is the nested code book of double quantization.
#include <algorithm>
#include <cmath>
#include <vector>

#include "quant/nf4.h"

namespace llamaq::nf4 {
namespace {

constexpr int kExponentBits = 7;

// torch.linspace(start, end, steps, dtype=float32) on the CPU in torch 2.x: the first half steps
// forward from `start`, the second half backward from `end`, each value one fused multiply-add.
std::vector<float> linspace_f32(float start, float end, int steps) {
  const float step = (end - start) / float(steps - 1);
  const int half = steps / 2;
  std::vector<float> values(static_cast<size_t>(steps));
  for (int i = 0; i < steps; ++i) {
    values[size_t(i)] =
        i < half ? std::fmaf(step, float(i), start) : std::fmaf(-step, float(steps - 1 - i), end);
  }
  return values;
}

std::array<float, kNestedCodes> build_dynamic_map() {
  std::vector<float> data;
  data.reserve(kNestedCodes);
  for (int i = 0; i < kExponentBits; ++i) {
    const int fraction_items = (1 << i) + 1;
    const std::vector<float> boundaries = linspace_f32(0.1f, 1.0f, fraction_items);
    // Python's 10 ** (i - 6) is a double; torch rounds the scalar to float32 before multiplying.
    const float scale = float(std::pow(10.0, double(i - 6)));
    std::vector<float> means;
    for (size_t j = 0; j + 1 < boundaries.size(); ++j) {
      means.push_back((boundaries[j] + boundaries[j + 1]) / 2.0f);
    }
    for (float mean : means)
      data.push_back(scale * mean);
    for (float mean : means)
      data.push_back(-scale * mean);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, kNestedCodes> map{};
  std::copy(data.begin(), data.end(), map.begin());
  return map;
}

}  // namespace

const std::array<float, kNestedCodes>& dynamic_map() {
  static const std::array<float, kNestedCodes> map = build_dynamic_map();
  return map;
}

}  // namespace llamaq::nf4
