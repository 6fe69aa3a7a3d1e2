// NF4: bitsandbytes' blockwise 4-bit NormalFloat format (specs §1), with optional double
// quantization of the block scales. One definition of the layout for every backend (the CUDA
// kernels include this header too), checked with static_asserts.
//
// Layout of a quantized [rows, cols] weight, flattened row-major (element k = row*cols + col):
//   packed[k / 2]: element 2i in the high nibble (bits 7..4), 2i+1 in the low nibble.
//   block b = k / block_size (64 in every checkpoint we know); scale[b] is
//     plain:          absmax[b]                                   (F32 [n_blocks])
//     double-quant:   nested_map[qabsmax[b]] * nested_absmax[b / 256] + nested_offset
//                     (qabsmax U8 [n_blocks], nested_absmax F32 [ceil(n_blocks / 256)])
//   w[k] = round_to(original dtype, code_table[code(k)] * scale[k / block_size])
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace llamaq::nf4 {

inline constexpr int64_t kDefaultBlockSize = 64;
inline constexpr int64_t kNestedBlockSize = 256;
inline constexpr int kCodes = 16;
inline constexpr int kNestedCodes = 256;

// The NF4 code book (bitsandbytes `nf4_dequantization_lut`), index = 4-bit code.
inline constexpr float kCodebook[kCodes] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// Decision thresholds of `dQuantizeNF4`: code = number of thresholds strictly below x.
inline constexpr float kThresholds[kCodes - 1] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

// The FP4 code book as bitsandbytes stores it in `quant_map` (get_4bit_type("fp4")): the values
// {0, 0.0625, 8, 12, 4, 6, 2, 3} with bit 3 as the sign, divided by 12 in float32. Code 8 is +0
// (the Python list holds the integer -0).
inline constexpr float kFp4Codebook[kCodes] = {
    0.0f,          0.0625f / 12.0f, 8.0f / 12.0f,  12.0f / 12.0f,    4.0f / 12.0f,  6.0f / 12.0f,
    2.0f / 12.0f,  3.0f / 12.0f,    0.0f,          -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f,
    -4.0f / 12.0f, -6.0f / 12.0f,   -2.0f / 12.0f, -3.0f / 12.0f,
};

// Which 4-bit code book a weight uses: the `quant_type` of its quant_state.
enum class QuantType : uint8_t { Nf4, Fp4 };

inline constexpr const char* quant_type_name(QuantType type) {
  return type == QuantType::Nf4 ? "nf4" : "fp4";
}
inline constexpr const float* code_book(QuantType type) {
  return type == QuantType::Nf4 ? kCodebook : kFp4Codebook;
}

// Block sizes bitsandbytes accepts for 4-bit (and 8-bit blockwise) quantization.
inline constexpr int64_t kValidBlockSizes[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
inline constexpr bool valid_block_size(int64_t block_size) {
  for (int64_t valid : kValidBlockSizes) {
    if (block_size == valid) return true;
  }
  return false;
}

static_assert(sizeof(kCodebook) == kCodes * sizeof(float));
static_assert(kCodebook[7] == 0.0f && kCodebook[0] == -1.0f && kCodebook[15] == 1.0f);
static_assert(kDefaultBlockSize % 2 == 0, "a block must hold whole bytes of nibbles");

// Scaled value in [-1, 1] -> 4-bit code (NaN -> 0, as the CUDA kernel).
inline uint8_t encode(float x) {
  uint8_t code = 0;
  for (float t : kThresholds)
    code += uint8_t(x > t);
  return code;
}

inline int64_t packed_bytes(int64_t n_elements) {
  return (n_elements + 1) / 2;
}
inline int64_t block_count(int64_t n_elements, int64_t block_size) {
  return (n_elements + block_size - 1) / block_size;
}

// bitsandbytes' signed 8-bit "dynamic" map (create_dynamic_map, torch 2.x float32 rounding),
// the nested quantization table of double quantization.
const std::array<float, kNestedCodes>& dynamic_map();

// A quantized weight (host or device tensors).
struct Nf4Weight {
  int64_t rows = 0;  // out_features
  int64_t cols = 0;  // in_features
  int64_t block_size = kDefaultBlockSize;
  QuantType quant_type = QuantType::Nf4;   // quant_state "quant_type"; code_table follows it
  DType original_dtype = DType::BF16;      // quant_state "dtype": what dequantized values round to
  Tensor packed;                           // [packed_bytes(rows*cols)] U8
  std::array<float, kCodes> code_table{};  // the checkpoint's quant_map (== kCodebook for NF4)
  bool double_quant = false;
  Tensor absmax;            // plain: [n_blocks] F32; double-quant: [n_blocks] U8 codes
  Tensor nested_absmax;     // double-quant: [ceil(n_blocks / 256)] F32
  Tensor nested_map;        // double-quant: [256] F32 (the stored map; dynamic_map() when ours)
  float nested_offset = 0;  // double-quant: mean of the absmax values subtracted before coding
  int64_t nested_block_size = kNestedBlockSize;

  int64_t elements() const { return rows * cols; }
  int64_t blocks() const { return block_count(elements(), block_size); }
};

// A weight's block scales decoded once into fp16, for kernels that read one scale per block at
// every decode step (the CPU fast linear): 16 conversions per instruction instead of a nested
// table lookup per block. Stored times 2^k so that the largest scale sits near the top of the
// fp16 range and small ones keep their precision (fp16: 11 significant bits, 2^-11 relative).
struct HalfScales {
  Tensor half;        // [n_blocks] F16: scale * 2^k
  float unscale = 1;  // 2^-k
};

}  // namespace llamaq::nf4
