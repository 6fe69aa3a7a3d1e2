// The q8 KV cache of the CPU backend (--kv-dtype q8): each group of kv_q8_group(head_dim) values
// of a key or value row is stored as int8 with one f32 scale, as llama.cpp's q8_0 cache does:
// scale = max|x| / 127, q = x / scale rounded to nearest (ties to even), value = q * scale. Half
// the memory of a bf16 cache (plus 4 bytes per 32 values); per value an error of at most half a
// step, max|x| / 254 of its group.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace llamaq::cpu {

// x [count] f32 -> q [count] i8 and scales [count / group] f32 (count a multiple of group).
inline void quantize_q8(const float* x, int64_t count, int64_t group, int8_t* q, float* scales) {
  for (int64_t g = 0; g * group < count; ++g) {
    const float* xs = x + g * group;
    float max_abs = 0;
    for (int64_t i = 0; i < group; ++i)
      max_abs = std::max(max_abs, std::fabs(xs[i]));
    const float scale = max_abs / 127.0f;
    scales[g] = scale;
    for (int64_t i = 0; i < group; ++i) {
      const float r = scale > 0 ? std::nearbyint(xs[i] / scale) : 0.0f;
      q[g * group + i] = int8_t(std::clamp(r, -127.0f, 127.0f));
    }
  }
}

// The inverse: out [count] = q * scale of its group.
inline void dequantize_q8(const int8_t* q, const float* scales, int64_t count, int64_t group,
                          float* out) {
  for (int64_t i = 0; i < count; ++i)
    out[i] = float(q[i]) * scales[i / group];
}

}  // namespace llamaq::cpu
