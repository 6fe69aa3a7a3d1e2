// The fast CPU kernels, one table per instruction-set level (isa.h). Each level lives in its own
// file compiled for that level only (see src/CMakeLists.txt); fast_linear.cpp picks a table at
// run time. The files use plain arrays and intrinsics, never shared inline templates, so no
// AVX code can leak into the portable build through the linker.
//
// NF4 x int8 (the approximation, bounded against the fp32 reference in tests/unit):
//   weights: each 4-bit code maps to int8 round(127 * code_table[code]), so a weight is
//            ~ wq * scale / 127 (llama.cpp's IQ4_NL does the same with its own table);
//   activations: every chunk of 64 values along `in` is quantized to int8 with its own scale
//            max|x| / 127, q = round(127 x / max|x|);
//   out[t, j] = sum over chunks c of dw[j, c] * da[t, c] * sum_i wq[j, i] * q[t, i] (exact int32)
//   with dw the weight block's scale and da = max|x| / 127 / 127 (both 1/127 factors folded in).
#pragma once

#include <cstdint>

#include "backend/cpu/isa.h"

namespace llamaq::cpu {

inline constexpr int64_t kChunk = 64;  // activation quantization chunk: one scale per 64 values
inline constexpr int64_t kPair = 2 * kChunk;  // the activation layout's unit: two chunks
inline constexpr int64_t kPairLanes = 16;     // int32 or f32 lanes of one zmm

// Activations quantized per 64-chunk, stored in pairs of chunks (A, B) laid out as one 64-byte
// load of packed NF4 bytes of the pair decodes: [even of A | even of B | odd of A | odd of B],
// 32 values each (the even elements are the high nibbles). An odd chunk count leaves the last
// pair's B half zero. Per pair, the scale and the bias are stored per int32 lane of that load:
// lanes 0..7 cover chunk A (bytes 4l..4l+3 of each half), lanes 8..15 chunk B.
struct Q8Activations {
  int64_t n_tokens = 0;
  int64_t cols = 0;           // a multiple of kChunk
  int64_t pairs = 0;          // ceil(cols / kPair)
  const int8_t* q = nullptr;  // [n_tokens, pairs, kPair] int8, laid out as above
  const float* scale =
      nullptr;  // [n_tokens, pairs, 16] f32: da = max|x| / 127^2 of the lane's chunk
  const int32_t* bias = nullptr;  // [n_tokens, pairs, 16] i32: -128 * sum of the 8 q of the lane

  // The 32 even / odd values of chunk c of token t, and that chunk's scale.
  const int8_t* even(int64_t t, int64_t c) const {
    return q + (t * pairs + c / 2) * kPair + (c % 2) * 32;
  }
  const int8_t* odd(int64_t t, int64_t c) const { return even(t, c) + kChunk; }
  float chunk_scale(int64_t t, int64_t c) const {
    return scale[(t * pairs + c / 2) * kPairLanes + (c % 2) * 8];
  }
};

// Rows [row_begin, row_begin + n_rows) of an NF4 weight against every token.
struct Nf4Rows {
  const uint8_t* packed = nullptr;  // the weight's packed nibbles ([rows * cols / 2] u8)
  int64_t cols = 0;                 // a multiple of kChunk
  int64_t row_begin = 0;
  int64_t n_rows = 0;
  const float* dw = nullptr;      // [n_rows, cols / kChunk] f32: the block scale of each chunk
  const int8_t* codes = nullptr;  // [16] int8: round(127 * code_table)
};

// out[t * out_stride + row_begin + r] for every token t and r < n_rows.
using Nf4Kernel = void (*)(const Nf4Rows& w, const Q8Activations& x, float* out,
                           int64_t out_stride);

// Dense bf16 rows [row_begin, row_begin + n_rows) of w [rows, cols] against f32 tokens, in fp32
// (bf16 widens exactly, so only the summation order differs from the reference).
using Bf16Kernel = void (*)(const uint16_t* w,  // [rows, cols] bf16
                            int64_t cols, int64_t row_begin, int64_t n_rows,
                            const float* x,  // [n_tokens, cols] f32
                            int64_t n_tokens,
                            float* out,  // [n_tokens, out_stride] f32
                            int64_t out_stride);

// dw[i] = float(half[i]) * unscale: block scales decoded once to fp16 (nf4::HalfScales).
using WidenScalesKernel = void (*)(const uint16_t* half,  // [n] f16
                                   int64_t n, float unscale,
                                   float* dw);  // [n] f32

struct KernelTable {
  Nf4Kernel nf4 = nullptr;
  Bf16Kernel bf16 = nullptr;
  WidenScalesKernel widen_scales = nullptr;
};

// Defined in kernels_portable.cpp, kernels_avx2.cpp and kernels_avx512.cpp.
KernelTable portable_kernels();
KernelTable avx2_kernels();
KernelTable avx512_kernels();

// The table of a supported non-reference level.
KernelTable kernels_for(Isa isa);

}  // namespace llamaq::cpu
