// AVX-512 (F/BW/VL/DQ + VNNI) kernels; this file alone is compiled with those flags.
// NF4: 32 packed bytes become 64 codes in one zmm ([high nibbles | low nibbles], the order the
// activations are stored in), vpshufb maps codes to (int8 weight + 128), and vpdpbusd multiplies
// 64 unsigned weights by 64 signed activations; the +128 is taken back exactly in int32 by
// starting each chunk's sum at -128 * sum(q) (Q8Activations::bias).
#include <immintrin.h>

// GCC 12's own _mm512_reduce_add_ps reads an _mm256_undefined_pd() placeholder, which its
// uninitialized-value analysis reports once inlined here; the value is never used.
// (GCC only: clang has no -Wmaybe-uninitialized and does not report it.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "backend/cpu/kernels.h"
#include "backend/cpu/tile_loop.h"

namespace llamaq::cpu {
namespace {

constexpr int kRowTile = 4;
constexpr int kTokenTile = 4;

// 64 weights (+128) of one chunk: high nibbles in bytes 0..31, low nibbles in bytes 32..63.
inline __m512i decode_chunk(const uint8_t* bytes, __m512i table) {
  const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
  const __m256i low_mask = _mm256_set1_epi8(15);
  const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask);
  const __m256i low = _mm256_and_si256(packed, low_mask);
  return _mm512_shuffle_epi8(table, _mm512_inserti64x4(_mm512_castsi256_si512(high), low, 1));
}

template <int R, int T>
void nf4_tile(const Nf4Rows& w, const Q8Activations& x, int64_t r0, int64_t t0, __m512i table,
              float* out, int64_t out_stride) {
  const int64_t chunks = w.cols / kChunk;
  const uint8_t* rows[R];
  const float* dw[R];
  for (int r = 0; r < R; ++r) {
    rows[r] = w.packed + (w.row_begin + r0 + r) * (w.cols / 2);
    dw[r] = w.dw + (r0 + r) * chunks;
  }
  const int8_t* q[T];
  const float* da[T];
  const int32_t* bias[T];
  for (int t = 0; t < T; ++t) {
    q[t] = x.q + (t0 + t) * x.cols;
    da[t] = x.scale + (t0 + t) * chunks;
    bias[t] = x.bias + (t0 + t) * chunks;
  }
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      acc[r][t] = _mm512_setzero_ps();
  }
  // The R rows are one contiguous span; while reading it, prefetch the span after the next (the
  // hardware prefetchers stop at 4 KiB pages, one span of four 2048-wide rows; two spans ahead
  // measured faster than one).
  const uint8_t* next_span = rows[0] + 2 * R * (w.cols / 2);
  for (int64_t c = 0; c < chunks; ++c) {
    _mm_prefetch(reinterpret_cast<const char*>(next_span + c * R * (kChunk / 2)), _MM_HINT_T0);
    if constexpr (R > 1) {
      _mm_prefetch(reinterpret_cast<const char*>(next_span + c * R * (kChunk / 2) + 64),
                   _MM_HINT_T0);
    }
    __m512i weights[R];
    for (int r = 0; r < R; ++r)
      weights[r] = decode_chunk(rows[r] + c * (kChunk / 2), table);
    for (int t = 0; t < T; ++t) {
      const __m512i a = _mm512_loadu_si512(q[t] + c * kChunk);
      const __m512i start = _mm512_zextsi128_si512(_mm_cvtsi32_si128(bias[t][c]));
      const __m512 scale_a = _mm512_set1_ps(da[t][c]);
      for (int r = 0; r < R; ++r) {
        const __m512i sum = _mm512_dpbusd_epi32(start, weights[r], a);
        const __m512 scale = _mm512_mul_ps(scale_a, _mm512_set1_ps(dw[r][c]));
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      out[(t0 + t) * out_stride + w.row_begin + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
  }
}

void nf4_avx512(const Nf4Rows& w, const Q8Activations& x, float* out, int64_t out_stride) {
  alignas(16) uint8_t biased[16];
  for (int i = 0; i < 16; ++i)
    biased[i] = uint8_t(int(w.codes[i]) + 128);
  const __m512i table =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(biased)));
  for_each_tile<kRowTile, kTokenTile>(0, w.n_rows, x.n_tokens,
                                      [&]<int R, int T>(int64_t r, int64_t t) {
                                        nf4_tile<R, T>(w, x, r, t, table, out, out_stride);
                                      });
}

// 16 bf16 values (the first `count` of them when count < 16) widened to f32.
inline __m512 load_bf16(const uint16_t* src, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, src);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <int R, int T>
void bf16_tile(const uint16_t* w, int64_t cols, int64_t r0, const float* x, int64_t t0, float* out,
               int64_t out_stride) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < cols; i += 16) {
    const __mmask16 mask = cols - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (cols - i)) - 1);
    __m512 weights[R];
    for (int r = 0; r < R; ++r)
      weights[r] = load_bf16(w + (r0 + r) * cols + i, mask);
    for (int t = 0; t < T; ++t) {
      const __m512 a = _mm512_maskz_loadu_ps(mask, x + (t0 + t) * cols + i);
      for (int r = 0; r < R; ++r)
        acc[r][t] = _mm512_fmadd_ps(weights[r], a, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      out[(t0 + t) * out_stride + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

void bf16_avx512(const uint16_t* w, int64_t cols, int64_t row_begin, int64_t n_rows, const float* x,
                 int64_t n_tokens, float* out, int64_t out_stride) {
  for_each_tile<kRowTile, kTokenTile>(row_begin, row_begin + n_rows, n_tokens,
                                      [&]<int R, int T>(int64_t r, int64_t t) {
                                        bf16_tile<R, T>(w, cols, r, x, t, out, out_stride);
                                      });
}

}  // namespace

KernelTable avx512_kernels() {
  return {nf4_avx512, bf16_avx512};
}

}  // namespace llamaq::cpu
