// The NF4 kernel family's parameters: one NF4 weight with device tensors, flattened into a plain
// struct (code table by value), and the launchers of the fused GEMV and the dequantizer.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>

#include "quant/nf4.h"

namespace llamaq::cuda {

// What a dequantized value is rounded to (the weight's original dtype), as bitsandbytes does.
enum class Nf4Rounding : int32_t { Bf16, F16, F32 };

struct Nf4Params {
  const uint8_t* packed;          // [ceil(rows * cols / 2)] u8, element 2i in the high nibble
  const float* absmax;            // plain: [n_blocks] f32 block scales
  const uint8_t* absmax_codes;    // double-quant: [n_blocks] u8 codes into nested_map
  const float* nested_absmax;     // double-quant: [ceil(n_blocks / nested_block_size)] f32
  const float* nested_map;        // double-quant: [256] f32
  float nested_offset;            // double-quant: added after the product
  float code_table[nf4::kCodes];  // the checkpoint's quant_map
  int64_t rows;                   // out_features
  int64_t cols;                   // in_features
  int block_shift;                // log2(block_size): block sizes are powers of two
  int block_size;
  unsigned nested_block_size;
  int nested_shift;  // log2(nested_block_size) when a power of two (256 always), else -1
  Nf4Rounding rounding;
  bool double_quant;
};

// `w` must hold device tensors.
Nf4Params make_nf4_params(const nf4::Nf4Weight& w);

// out[t, j] = sum_i x[t, i] * dequant(W)[j, i] for n <= kNf4GemvMaxTokens, reading each weight
// byte once, on the tensor cores (bf16 operands, fp32 accumulation). Needs cols % 32 == 0,
// block_size % 32 == 0 and 16-byte aligned x. `multiprocessors` picks the row tiling.
constexpr int kNf4GemvMaxTokens = 32;
void launch_nf4_gemv(const Nf4Params& p,
                     const float* x,  // [n, cols] f32
                     float* out,      // [n, rows] f32
                     int n, int multiprocessors, cudaStream_t stream);

// The streaming CUDA-core GEMV for decode (nf4_gemv_stream.cu): same product for 1 <= n <=
// kNf4StreamMaxTokens, fp32 throughout, dequantized values not rounded to the original dtype.
// Needs cols % 8 == 0, a power-of-two nested block size and 16-byte aligned x.
constexpr int kNf4StreamMaxTokens = 8;
bool nf4_stream_gemv_supported(const Nf4Params& p);
void launch_nf4_stream_gemv(const Nf4Params& p,
                            const float* x,  // [n, cols] f32
                            float* out,      // [n, rows] f32
                            int n, int multiprocessors, cudaStream_t stream);

// The integer-pipe GEMV for decode (nf4_gemv_dp4a.cu): int8 code values and int8 activations per
// 32 columns through dp4a, 1 <= n <= kNf4Dp4aMaxTokens; ~5e-3 relative from the fp32 product.
// Needs cols a multiple of 1024 up to 16384, a code book whose codes 0..7 are <= 0 and 8..15 are
// >= 0 (NF4's), a power-of-two nested block size and 16-byte aligned data.
constexpr int kNf4Dp4aMaxTokens = 4;
bool nf4_dp4a_gemv_supported(const Nf4Params& p, int n, int multiprocessors);
void launch_nf4_dp4a_gemv(const Nf4Params& p,
                          const float* x,  // [n, cols] f32
                          float* out,      // [n, rows] f32
                          int n, int multiprocessors, cudaStream_t stream);
// Up to three matrices with the same cols, block size, scale format and code book in one launch:
// outs[i] = x ps[i]^T ([n, rows_i] f32 each). With `swiglu` (two matrices of equal rows: gate,
// up), one output: silu(x gate^T) * (x up^T), [n, rows] f32.
// Options of a group launch. accumulate: outs[i] += result (a residual add) instead of
// outs[i] = result.
struct Dp4aOptions {
  bool accumulate = false;
};
bool nf4_dp4a_group_supported(std::span<const Nf4Params> ps, int n, bool swiglu,
                              const Dp4aOptions& options, int multiprocessors);
void launch_nf4_dp4a_group(std::span<const Nf4Params> ps,
                           const float* x,                // [n, cols] f32
                           std::span<float* const> outs,  // see above
                           int n, bool swiglu, const Dp4aOptions& options, int multiprocessors,
                           cudaStream_t stream);

}  // namespace llamaq::cuda
