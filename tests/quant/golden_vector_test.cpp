// The golden test vector of specs §1.9 (NF4, block size 64, double quantization): absmax, codes,
// packed bytes, offset, nested absmax, absmax codes, dequantized scales and values, all bit-exact,
// plus the quant_state JSON such a weight gets.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "quant/bnb_tensors.h"
#include "quant/nf4_codec.h"
#include "quant/quant_test_support.h"

namespace llamaq::nf4 {
namespace {

constexpr const char* kPackedHex =
    "78adeee88642106557adf9abb952643224789bdeed7652100667acef9aa8521543347c8acddc97532111679ceff89"
    "8631054457be9bccb95643212478bdeee87642106567bdf9aba85264323488acdeec7642100667adef9a98521543"
    "358c8acddc87532111779ceff898531054458be9accb84643212479bdeee87631006568";

// w[k] = bf16(sin(k * 0.37) * (1 + k % 7) / 8): float64, then float32, then bf16 (RNE).
Tensor golden_weight() {
  return test::make_weight(DType::BF16, 2, 128, [](int64_t k) {
    return float(std::sin(double(k) * 0.37) * double(1 + k % 7) / 8.0);
  });
}

std::string to_hex(const Tensor& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (int64_t i = 0; i < bytes.numel(); ++i) {
    const uint8_t b = bytes.data_as<const uint8_t>()[i];
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

class GoldenVector : public ::testing::Test {
 protected:
  ThreadPool pool{2};
  Tensor weight = golden_weight();
  Nf4Weight plain = quantize(weight, false, pool);
  Nf4Weight nested = quantize(weight, true, pool);
};

TEST_F(GoldenVector, InputMatchesTheDocumentedFirstValues) {
  const uint16_t expected[8] = {0x0000, 0x3db9, 0x3e81, 0x3ee5, 0x3f1f, 0x3f39, 0x3f32, 0x3d86};
  for (int k = 0; k < 8; ++k)
    EXPECT_EQ(weight.data_as<uint16_t>()[k], expected[k]) << k;
}

TEST_F(GoldenVector, AbsmaxCodesAndPackedBytes) {
  ASSERT_EQ(plain.blocks(), 4);
  const uint32_t absmax_bits[4] = {0x3f5f0000, 0x3f5a0000, 0x3f600000, 0x3f5c0000};
  for (int b = 0; b < 4; ++b) {
    EXPECT_EQ(test::bits(plain.absmax.data_as<float>()[b]), absmax_bits[b]) << "block " << b;
  }
  const int codes[16] = {7, 8, 10, 13, 14, 14, 14, 8, 8, 6, 4, 2, 1, 0, 6, 5};
  const uint8_t* packed = plain.packed.data_as<uint8_t>();
  for (int k = 0; k < 16; ++k) {
    const int code = k % 2 ? packed[k / 2] & 15 : packed[k / 2] >> 4;
    EXPECT_EQ(code, codes[k]) << "element " << k;
  }
  EXPECT_EQ(plain.packed.shape(), Shape{128});
  EXPECT_EQ(to_hex(plain.packed), kPackedHex);
  EXPECT_EQ(to_hex(nested.packed), kPackedHex);  // double quant changes only the scales
}

TEST_F(GoldenVector, DoubleQuantizedScales) {
  EXPECT_TRUE(nested.double_quant);
  EXPECT_EQ(test::bits(nested.nested_offset), 0x3f5d4000u);  // 0.8642578125
  ASSERT_EQ(nested.nested_absmax.numel(), 1);
  EXPECT_EQ(test::bits(nested.nested_absmax.data_as<float>()[0]), 0x3c500000u);  // 0.0126953125
  ASSERT_EQ(nested.absmax.dtype(), DType::U8);
  const uint8_t codes[4] = {222, 0, 244, 43};
  for (int b = 0; b < 4; ++b)
    EXPECT_EQ(nested.absmax.data_as<uint8_t>()[b], codes[b]) << b;
  const std::vector<float> scales = block_scales(nested);
  const double expected[4] = {0.8711509704589844, 0.8516517877578735, 0.875078558921814,
                              0.8593284487724304};
  for (int b = 0; b < 4; ++b)
    EXPECT_EQ(scales[size_t(b)], float(expected[b])) << "block " << b;
  for (int i = 0; i < kNestedCodes; ++i) {
    EXPECT_EQ(nested.nested_map.data_as<float>()[i], dynamic_map()[size_t(i)]);
  }
}

TEST_F(GoldenVector, DequantizedValues) {
  const float expected[8] = {0.0f,        0.0693359375f, 0.21484375f, 0.490234375f,
                             0.62890625f, 0.62890625f,   0.62890625f, 0.0693359375f};
  const Tensor deq = dequantize(nested, DType::BF16, pool);
  EXPECT_EQ(deq.shape(), (Shape{2, 128}));
  for (int k = 0; k < 8; ++k) {
    EXPECT_EQ(bf16_to_float(deq.data_as<uint16_t>()[k]), expected[k]) << "element " << k;
  }
  std::vector<float> rows(256);
  dequantize_rows(nested, 0, 2, rows.data());
  for (int k = 0; k < 256; ++k) {
    EXPECT_EQ(rows[size_t(k)], bf16_to_float(deq.data_as<uint16_t>()[k])) << "element " << k;
  }
}

TEST_F(GoldenVector, QuantStateJson) {
  EXPECT_EQ(
      quant_state_json(nested),
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 128], )"
      R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.8642578125})");
  EXPECT_EQ(quant_state_json(plain),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 128]})");
}

}  // namespace
}  // namespace llamaq::nf4
