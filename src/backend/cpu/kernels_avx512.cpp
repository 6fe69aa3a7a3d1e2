// AVX-512 (F/BW/VL/DQ + VNNI + VBMI) kernels; this file alone is compiled with those flags.
// NF4: one 64-byte load holds a pair of chunks (2 x 64 weights). Its low nibbles and its high
// nibbles are each one zmm of codes, in the order the activations are stored (Q8Activations);
// vpermb maps codes to (int8 weight + 128) from the 16-entry table repeated 4 times (vpermb reads
// 6 index bits, so the nibble needs no mask: 3 instructions where vpshufb took 5, measured 30 ->
// 22 us for a [512, 2048] weight in L2 on Zen 4), and two vpdpbusd multiply the 128 unsigned
// weights by their signed activations into 16 int32 lanes, 8 per chunk. The +128 is taken back
// exactly by starting each lane at -128 * the sum of its activations (Q8Activations::bias); each
// lane is then scaled by its chunk's activation and weight scales. Per pair and row that is 9
// vector instructions, where a chunk at a time took 2 x 12.
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

// The 128 weights (+128) of a pair of chunks at `bytes`: high nibbles, then low nibbles. With
// `half`, only chunk A exists (32 bytes; the rest reads as code 0, met by zero activations).
struct PairWeights {
  __m512i high, low;
};

// table: the 16 biased int8 weights repeated 4 times.
inline PairWeights decode_pair(const uint8_t* bytes, __m512i table, bool half) {
  const __m512i packed =
      half ? _mm512_maskz_loadu_epi8(0xffffffffULL, bytes) : _mm512_loadu_si512(bytes);
  return {_mm512_permutexvar_epi8(_mm512_srli_epi16(packed, 4), table),
          _mm512_permutexvar_epi8(packed, table)};
}

// Lanes 0..7 = dw[0], lanes 8..15 = dw[1] (dw[1] is not read for a half pair: lanes 8..15 = 0).
inline __m512 pair_scales(const float* dw, bool half) {
  if (half) return _mm512_maskz_mov_ps(0x00ff, _mm512_set1_ps(dw[0]));
  const __m512i two_halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m128 both = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(dw)));
  return _mm512_permutexvar_ps(two_halves, _mm512_castps128_ps512(both));
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
    q[t] = x.q + (t0 + t) * x.pairs * kPair;
    da[t] = x.scale + (t0 + t) * x.pairs * kPairLanes;
    bias[t] = x.bias + (t0 + t) * x.pairs * kPairLanes;
  }
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t)
      acc[r][t] = _mm512_setzero_ps();
  }
  // The R rows are one contiguous span; while reading it, prefetch the span after the next (the
  // hardware prefetchers stop at 4 KiB pages, one span of four 2048-wide rows; two spans ahead
  // measured faster than one). One pair of R rows is R cache lines.
  const uint8_t* next_span = rows[0] + 2 * R * (w.cols / 2);
  for (int64_t p = 0; p < x.pairs; ++p) {
    const bool half = 2 * p + 1 == chunks;
    for (int r = 0; r < R; ++r)
      _mm_prefetch(reinterpret_cast<const char*>(next_span + (p * R + r) * 64), _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const PairWeights weights = decode_pair(rows[r] + p * 64, table, half);
      const __m512 scale_w = pair_scales(dw[r] + 2 * p, half);
      for (int t = 0; t < T; ++t) {
        const int8_t* qp = q[t] + p * kPair;
        __m512i sum = _mm512_loadu_si512(bias[t] + p * kPairLanes);
        sum = _mm512_dpbusd_epi32(sum, weights.high, _mm512_loadu_si512(qp));
        sum = _mm512_dpbusd_epi32(sum, weights.low, _mm512_loadu_si512(qp + kChunk));
        const __m512 scaled =
            _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_loadu_ps(da[t] + p * kPairLanes));
        acc[r][t] = _mm512_fmadd_ps(scaled, scale_w, acc[r][t]);
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

void widen_scales_avx512(const uint16_t* half, int64_t n, float unscale, float* dw) {
  const __m512 scale = _mm512_set1_ps(unscale);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m256i h = _mm256_maskz_loadu_epi16(mask, half + i);
    _mm512_mask_storeu_ps(dw + i, mask, _mm512_mul_ps(_mm512_cvtph_ps(h), scale));
  }
}

}  // namespace

KernelTable avx512_kernels() {
  return {nf4_avx512, bf16_avx512, widen_scales_avx512};
}

}  // namespace llamaq::cpu
