// NF4 quantization and dequantization, bit-exact with bitsandbytes (specs §1.2-§1.7).
#pragma once

#include <vector>

#include "core/thread_pool.h"
#include "quant/nf4.h"

namespace llamaq::nf4 {

// Quantizes a host weight [rows, cols] (BF16, F16 or F32) as bitsandbytes quantize_4bit does:
// blocks of `block_size` over the row-major elements, float32 absmax, nearest code by the
// thresholds, high nibble first; with double_quant, absmax minus its mean coded with the dynamic
// map in blocks of 256. Parallel over blocks. The result owns host tensors.
// An all-zero block is coded 7 (0.0) so it dequantizes to 0 even with a double-quantized scale;
// the mean is summed exactly and rounded once to float32. Non-finite input is an Error.
Nf4Weight quantize(const Tensor& weight, bool double_quant, ThreadPool& pool,
                   int64_t block_size = kDefaultBlockSize);

// The float32 scale of every block (the dequantized absmax).
std::vector<float> block_scales(const Nf4Weight& w);

// The same scales rounded to fp16 (see HalfScales).
HalfScales half_scales(const Nf4Weight& w);

// Dequantizes rows [row_begin, row_begin + count) into `out` ([count, cols] f32). Each value is
// code_table[code] * scale in float32, rounded to w.original_dtype as bitsandbytes does, then
// widened. Decodes the scales it needs itself: no per-weight state, safe from many threads.
void dequantize_rows(const Nf4Weight& w, int64_t row_begin, int64_t count, float* out);

// The whole weight as a host tensor of `dtype` (BF16, F16 or F32).
Tensor dequantize(const Nf4Weight& w, DType dtype, ThreadPool& pool);

}  // namespace llamaq::nf4
