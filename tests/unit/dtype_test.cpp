#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"

namespace llamaq {
namespace {

TEST(DType, NamesRoundTripAndBitSizesFollowTheSpec) {
  for (int i = 0; i < kDTypeCount; ++i) {
    const auto dtype = static_cast<DType>(i);
    EXPECT_EQ(parse_dtype(dtype_name(dtype)), dtype);
  }
  EXPECT_EQ(dtype_bits(DType::F4), 4);
  EXPECT_EQ(dtype_bits(DType::F6_E2M3), 6);
  EXPECT_EQ(dtype_bits(DType::BF16), 16);
  EXPECT_EQ(dtype_bits(DType::C64), 64);
  EXPECT_FALSE(parse_dtype("F31").has_value());
  EXPECT_FALSE(parse_dtype("bf16").has_value());  // spelling is exact
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa.
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = bf16_to_float(uint16_t(bits));
    if (std::isnan(value)) continue;
    ASSERT_EQ(float_to_bf16(value), bits);
  }
}

TEST(DType, Fp16RoundTripsEveryValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = fp16_to_float(uint16_t(bits));
    if (std::isnan(value)) continue;
    ASSERT_EQ(float_to_fp16(value), bits) << std::hex << bits;
  }
  EXPECT_EQ(fp16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_float(0x0001), 0x1p-24f);  // smallest subnormal
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(float_to_fp16(1.0f + 0x1p-11f), 0x3c00);  // tie to even
}

}  // namespace
}  // namespace llamaq
