// Element types: the full safetensors dtype list (specs §3.2) with bit sizes, plus conversions
// between fp32 and the 16-bit float formats used by checkpoints.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace llamaq {

// Order matters: it is the safetensors `Dtype` enum order, which the writer sorts by.
enum class DType : uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

inline constexpr int kDTypeCount = static_cast<int>(DType::U64) + 1;

std::string_view dtype_name(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);
int dtype_bits(DType dtype);
// Bytes per element for byte-sized types; sub-byte types (F4, F6) are not addressable by element.
int dtype_size(DType dtype);

inline float bf16_to_float(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

// Round to nearest even, as torch's `.to(torch.bfloat16)`; NaN stays NaN.
inline uint16_t float_to_bf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float fp16_to_float(uint16_t bits);
uint16_t float_to_fp16(float value);

}  // namespace llamaq
