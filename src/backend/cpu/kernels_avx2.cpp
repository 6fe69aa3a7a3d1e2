// AVX2 + FMA kernels; this file alone is compiled with those flags.
// NF4: 32 packed bytes become two ymm of codes (high nibbles, low nibbles: the order the
// activations are stored in), vpshufb maps them to int8 weights, and vpmaddubsw multiplies
// |w| by sign(w) * q (llama.cpp's sign trick: |w|, |q| <= 127 keep the int16 pair sums below
// 32767, so nothing saturates), vpmaddwd widens to int32.
#include <immintrin.h>

#include "backend/cpu/kernels.h"
#include "backend/cpu/tile_loop.h"

namespace llamaq::cpu {
namespace {

// 16 ymm registers: NF4 tiles hold 2 rows x 4 decoded registers + 2 x 2 sums; bf16 tiles 4 rows
// + 4 x 2 sums.
constexpr int kNf4RowTile = 2;
constexpr int kNf4TokenTile = 2;
constexpr int kBf16RowTile = 4;
constexpr int kBf16TokenTile = 2;

struct ChunkWeights {
  __m256i high_abs, high_sign, low_abs, low_sign;
};

inline ChunkWeights decode_chunk(const uint8_t* bytes, __m256i table) {
  const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
  const __m256i low_mask = _mm256_set1_epi8(15);
  const __m256i high =
      _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask));
  const __m256i low = _mm256_shuffle_epi8(table, _mm256_and_si256(packed, low_mask));
  return {_mm256_abs_epi8(high), high, _mm256_abs_epi8(low), low};
}

// int32 partial sums of one chunk: sum over 64 weights of w * q, in 8 lanes.
inline __m256i chunk_dot(const ChunkWeights& w, __m256i q_high, __m256i q_low) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i high = _mm256_maddubs_epi16(w.high_abs, _mm256_sign_epi8(q_high, w.high_sign));
  const __m256i low = _mm256_maddubs_epi16(w.low_abs, _mm256_sign_epi8(q_low, w.low_sign));
  return _mm256_add_epi32(_mm256_madd_epi16(high, ones), _mm256_madd_epi16(low, ones));
}

inline float reduce_add(__m256 v) {
  const __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  return _mm_cvtss_f32(_mm_add_ss(sum2, _mm_movehdup_ps(sum2)));
}

template <int R, int T>
void nf4_tile(const Nf4Rows& w, const Q8Activations& x, int64_t r0, int64_t t0, __m256i table,
              float* out, int64_t out_stride) {
  const int64_t chunks = w.cols / kChunk;
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      acc[r][t] = _mm256_setzero_ps();
  }
  // The R rows are one contiguous span; prefetch the next one while reading it (the hardware
  // prefetchers stop at 4 KiB pages).
  const uint8_t* next_span = w.packed + (w.row_begin + r0 + R) * (w.cols / 2);
  for (int64_t c = 0; c < chunks; ++c) {
    _mm_prefetch(reinterpret_cast<const char*>(next_span + c * R * (kChunk / 2)), _MM_HINT_T0);
    ChunkWeights weights[R];
    for (int r = 0; r < R; ++r) {
      weights[r] =
          decode_chunk(w.packed + (w.row_begin + r0 + r) * (w.cols / 2) + c * (kChunk / 2), table);
    }
    for (int t = 0; t < T; ++t) {
      const __m256i q_high =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.even(t0 + t, c)));
      const __m256i q_low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.odd(t0 + t, c)));
      const float da = x.chunk_scale(t0 + t, c);
      for (int r = 0; r < R; ++r) {
        const __m256 scale = _mm256_set1_ps(da * w.dw[(r0 + r) * chunks + c]);
        const __m256 sum = _mm256_cvtepi32_ps(chunk_dot(weights[r], q_high, q_low));
        acc[r][t] = _mm256_fmadd_ps(sum, scale, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      out[(t0 + t) * out_stride + w.row_begin + r0 + r] = reduce_add(acc[r][t]);
  }
}

void nf4_avx2(const Nf4Rows& w, const Q8Activations& x, float* out, int64_t out_stride) {
  const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.codes));
  const __m256i table = _mm256_broadcastsi128_si256(codes);
  for_each_tile<kNf4RowTile, kNf4TokenTile>(0, w.n_rows, x.n_tokens,
                                            [&]<int R, int T>(int64_t r, int64_t t) {
                                              nf4_tile<R, T>(w, x, r, t, table, out, out_stride);
                                            });
}

inline __m256 load_bf16(const uint16_t* src) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

template <int R, int T>
void bf16_tile(const uint16_t* w, int64_t cols, int64_t r0, const float* x, int64_t t0, float* out,
               int64_t out_stride) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      acc[r][t] = _mm256_setzero_ps();
  }
  const int64_t body = cols / 8 * 8;
  for (int64_t i = 0; i < body; i += 8) {
    __m256 weights[R];
    for (int r = 0; r < R; ++r)
      weights[r] = load_bf16(w + (r0 + r) * cols + i);
    for (int t = 0; t < T; ++t) {
      const __m256 a = _mm256_loadu_ps(x + (t0 + t) * cols + i);
      for (int r = 0; r < R; ++r)
        acc[r][t] = _mm256_fmadd_ps(weights[r], a, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float sum = reduce_add(acc[r][t]);
      for (int64_t i = body; i < cols; ++i) {
        const uint32_t bits = uint32_t(w[(r0 + r) * cols + i]) << 16;
        float weight;
        __builtin_memcpy(&weight, &bits, sizeof(weight));
        sum += weight * x[(t0 + t) * cols + i];
      }
      out[(t0 + t) * out_stride + r0 + r] = sum;
    }
  }
}

void bf16_avx2(const uint16_t* w, int64_t cols, int64_t row_begin, int64_t n_rows, const float* x,
               int64_t n_tokens, float* out, int64_t out_stride) {
  for_each_tile<kBf16RowTile, kBf16TokenTile>(row_begin, row_begin + n_rows, n_tokens,
                                              [&]<int R, int T>(int64_t r, int64_t t) {
                                                bf16_tile<R, T>(w, cols, r, x, t, out, out_stride);
                                              });
}

void widen_scales_avx2(const uint16_t* half, int64_t n, float unscale, float* dw) {
  const __m256 scale = _mm256_set1_ps(unscale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(half + i));
    _mm256_storeu_ps(dw + i, _mm256_mul_ps(_mm256_cvtph_ps(h), scale));
  }
  for (; i < n; ++i)
    dw[i] = _cvtsh_ss(half[i]) * unscale;
}

}  // namespace

KernelTable avx2_kernels() {
  return {nf4_avx2, bf16_avx2, widen_scales_avx2};
}

}  // namespace llamaq::cpu
