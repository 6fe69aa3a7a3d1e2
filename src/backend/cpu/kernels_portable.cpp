// The fast path's algorithms in plain C++: the portable fallback, and the exact integer oracle
// the SIMD levels are tested against (their int32 chunk sums are identical by construction).
#include <bit>

#include "backend/cpu/kernels.h"
#include "core/dtype.h"

namespace llamaq::cpu {
namespace {

void nf4_portable(const Nf4Rows& w, const Q8Activations& x, float* out, int64_t out_stride) {
  const int64_t chunks = w.cols / kChunk;
  for (int64_t r = 0; r < w.n_rows; ++r) {
    const uint8_t* row = w.packed + (w.row_begin + r) * (w.cols / 2);
    const float* dw = w.dw + r * chunks;
    for (int64_t t = 0; t < x.n_tokens; ++t) {
      float acc = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const uint8_t* bytes = row + c * (kChunk / 2);
        const int8_t* even = x.even(t, c);
        const int8_t* odd = x.odd(t, c);
        int32_t isum = 0;
        for (int64_t j = 0; j < kChunk / 2; ++j) {
          isum += int32_t(w.codes[bytes[j] >> 4]) * even[j];
          isum += int32_t(w.codes[bytes[j] & 15]) * odd[j];
        }
        acc += float(isum) * (dw[c] * x.chunk_scale(t, c));
      }
      out[t * out_stride + w.row_begin + r] = acc;
    }
  }
}

void bf16_portable(const uint16_t* w, int64_t cols, int64_t row_begin, int64_t n_rows,
                   const float* x, int64_t n_tokens, float* out, int64_t out_stride) {
  for (int64_t r = row_begin; r < row_begin + n_rows; ++r) {
    const uint16_t* row = w + r * cols;
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * cols;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= cols; i += 8) {
        for (int lane = 0; lane < 8; ++lane) {
          acc[lane] += std::bit_cast<float>(uint32_t(row[i + lane]) << 16) * xt[i + lane];
        }
      }
      float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; i < cols; ++i)
        sum += std::bit_cast<float>(uint32_t(row[i]) << 16) * xt[i];
      out[t * out_stride + r] = sum;
    }
  }
}

}  // namespace

void widen_scales_portable(const uint16_t* half, int64_t n, float unscale, float* dw) {
  for (int64_t i = 0; i < n; ++i)
    dw[i] = fp16_to_float(half[i]) * unscale;
}

KernelTable portable_kernels() {
  return {nf4_portable, bf16_portable, widen_scales_portable};
}

}  // namespace llamaq::cpu
