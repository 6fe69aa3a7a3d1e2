// NF4 codec edge cases against a plain scalar reference written from specs §1.2-§1.6: odd
// element counts, partial last blocks, all-zero blocks, threshold ties, large values, blocks that
// straddle rows, several nested blocks, every original dtype and thread-count independence.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "quant/bnb_tensors.h"
#include "quant/nf4_codec.h"
#include "quant/quant_test_support.h"
#include "test_util.h"

namespace llamaq::nf4 {
namespace {

int code_at(const Nf4Weight& w, int64_t k) {
  const uint8_t byte = w.packed.data_as<const uint8_t>()[k / 2];
  return k % 2 ? byte & 15 : byte >> 4;
}

// Scalar reference: the code of a scaled value is the number of thresholds below it.
int reference_code(float x) {
  return int(std::lower_bound(std::begin(kThresholds), std::end(kThresholds), x) -
             std::begin(kThresholds));
}

float round_to(DType dtype, float v) {
  if (dtype == DType::BF16) return bf16_to_float(float_to_bf16(v));
  if (dtype == DType::F16) return fp16_to_float(float_to_fp16(v));
  return v;
}

// Checks absmax, every code and every dequantized value of `w` against the reference.
void expect_matches_reference(const Tensor& weight, const Nf4Weight& w) {
  const std::vector<float> x = test::floats_of(weight);
  const int64_t n = int64_t(x.size());
  const std::vector<float> scales = block_scales(w);
  std::vector<float> deq(x.size());
  dequantize_rows(w, 0, w.rows, deq.data());
  for (int64_t b = 0; b < w.blocks(); ++b) {
    const int64_t first = b * w.block_size;
    const int64_t last = std::min(n, first + w.block_size);
    float absmax = 0.0f;
    for (int64_t k = first; k < last; ++k)
      absmax = std::max(absmax, std::fabs(x[size_t(k)]));
    if (!w.double_quant) {
      ASSERT_EQ(scales[size_t(b)], absmax) << "block " << b;
    }
    for (int64_t k = first; k < last; ++k) {
      const int expected = absmax == 0.0f ? 7 : reference_code(x[size_t(k)] * (1.0f / absmax));
      ASSERT_EQ(code_at(w, k), expected) << "element " << k;
      const float value = round_to(w.original_dtype, kCodebook[expected] * scales[size_t(b)]);
      ASSERT_EQ(deq[size_t(k)], value) << "element " << k;
    }
  }
  if (n % 2) {
    EXPECT_EQ(w.packed.data_as<const uint8_t>()[n / 2] & 15, 0) << "last low nibble";
  }
}

class CodecEdges : public ::testing::Test {
 protected:
  ThreadPool pool{2};
};

TEST_F(CodecEdges, OddElementCountLeavesTheLastLowNibbleZero) {
  const Tensor weight = test::random_weight(DType::BF16, 3, 7, 1);
  for (bool dq : {false, true}) {
    const Nf4Weight w = quantize(weight, dq, pool, 32);
    EXPECT_EQ(w.packed.numel(), 11);
    expect_matches_reference(weight, w);
  }
}

TEST_F(CodecEdges, PartialLastBlockUsesOnlyItsOwnElements) {
  // 150 elements: blocks of 64, 64 and 22; the big values sit in the full blocks.
  const Tensor weight = test::make_weight(DType::F32, 5, 30, [](int64_t k) {
    return k < 128 ? float(k % 9) - 4.0f : 0.01f * float(k - 140);
  });
  for (bool dq : {false, true}) {
    const Nf4Weight w = quantize(weight, dq, pool);
    ASSERT_EQ(w.blocks(), 3);
    if (!dq) {
      EXPECT_EQ(w.absmax.data_as<float>()[2], std::fabs(0.01f * float(128 - 140)));
    }
    expect_matches_reference(weight, w);
  }
}

TEST_F(CodecEdges, AllZeroBlocksDequantizeToZero) {
  const Tensor weight = test::make_weight(DType::BF16, 4, 64, [](int64_t k) {
    return k / 64 == 1 || k / 64 == 3 ? 0.0f : std::sin(float(k));
  });
  for (bool dq : {false, true}) {
    const Nf4Weight w = quantize(weight, dq, pool);
    const std::vector<float> deq = test::floats_of(dequantize(w, DType::F32, pool));
    for (int64_t k = 64; k < 128; ++k)
      ASSERT_EQ(deq[size_t(k)], 0.0f) << k;
    for (int64_t k = 192; k < 256; ++k)
      ASSERT_EQ(deq[size_t(k)], 0.0f) << k;
    expect_matches_reference(weight, w);
  }
  // A weight that is all zeros: absmax 0 everywhere, nested absmax 0, still exactly zero.
  const Nf4Weight zeros = quantize(Tensor::zeros(DType::F32, {3, 64}), true, pool);
  for (float v : test::floats_of(dequantize(zeros, DType::F32, pool)))
    ASSERT_EQ(v, 0.0f);
}

TEST_F(CodecEdges, ValuesOnAThresholdStayOnTheLowerCode) {
  // absmax 1.0 makes the scaled value the value itself: t_i -> code i, just above -> code i + 1.
  std::vector<float> values = {1.0f};
  for (float t : kThresholds) {
    values.push_back(t);
    values.push_back(std::nextafter(t, 2.0f));
  }
  values.resize(32, 0.0f);
  const Tensor weight =
      test::make_weight(DType::F32, 1, 32, [&](int64_t k) { return values[size_t(k)]; });
  const Nf4Weight w = quantize(weight, false, pool, 32);
  for (int i = 0; i < kCodes - 1; ++i) {
    EXPECT_EQ(code_at(w, 1 + 2 * i), i) << "threshold " << i;
    EXPECT_EQ(code_at(w, 2 + 2 * i), i + 1) << "above threshold " << i;
  }
}

TEST_F(CodecEdges, LargeValuesGiveFiniteOutput) {
  const std::pair<DType, float> cases[] = {
      {DType::F32, 3e38f}, {DType::BF16, 3e38f}, {DType::F16, 65504.0f}, {DType::F32, 1e-30f}};
  for (const auto& [dtype, scale] : cases) {
    SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + std::to_string(scale));
    const Tensor weight = test::random_weight(dtype, 33, 96, 3, scale);
    for (bool dq : {false, true}) {
      const Nf4Weight w = quantize(weight, dq, pool);
      for (float s : block_scales(w))
        ASSERT_TRUE(std::isfinite(s));
      const std::vector<float> deq = test::floats_of(dequantize(w, DType::F32, pool));
      const std::vector<float> x = test::floats_of(weight);
      for (size_t k = 0; k < deq.size(); ++k) {
        ASSERT_TRUE(std::isfinite(deq[k])) << k;
        // NF4's widest gap is between 0.7229568 and 1.0: an error of at most 0.1385 of absmax;
        // double quantization's 8-bit scale adds about 1% of the largest absmax.
        ASSERT_LE(std::fabs(deq[k] - x[k]), 0.16f * scale) << k;
      }
      if (!dq) {
        expect_matches_reference(weight, w);
      }
    }
  }
}

// fp16 block scales (what the CPU fast linear reads): each is the float32 scale within fp16's
// rounding, whatever the weights' magnitude (fp16 alone would overflow at 3e38 and lose 1e-30).
TEST_F(CodecEdges, HalfScalesKeepEveryScaleToFp16Precision) {
  for (float scale : {3e38f, 1.0f, 1e-3f, 1e-30f}) {
    SCOPED_TRACE(std::to_string(scale));
    const Tensor weight = test::random_weight(DType::F32, 33, 128, 4, scale);
    for (bool dq : {false, true}) {
      const Nf4Weight w = quantize(weight, dq, pool);
      const std::vector<float> scales = block_scales(w);
      const HalfScales half = half_scales(w);
      ASSERT_EQ(half.half.numel(), int64_t(scales.size()));
      float largest = 0;
      for (float s : scales)
        largest = std::max(largest, std::fabs(s));
      for (size_t b = 0; b < scales.size(); ++b) {
        const float widened = fp16_to_float(half.half.data_as<const uint16_t>()[b]) * half.unscale;
        // Round to nearest in fp16: half a unit in the last of 11 significant bits, 2^-11
        // relative; scales below 2^-10 of the largest fall into fp16's subnormals, whose step
        // is 2^-24 of the stored 2^14..2^15, so their error is bounded by that absolute step.
        const float bound = std::max(std::fabs(scales[b]) * 0x1p-11f, largest * 0x1p-38f);
        ASSERT_LE(std::fabs(widened - scales[b]), bound) << "block " << b << " dq " << dq;
      }
    }
  }
}

TEST_F(CodecEdges, DequantizeRowsOverAnyRangeEqualsTheFullWeight) {
  // 97 x 65 with blocks of 64: blocks straddle rows, odd rows start on a low nibble, and the
  // last block is partial (6305 = 98 * 64 + 33).
  for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
    for (bool dq : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + (dq ? " double quant" : " plain"));
      const Tensor weight = test::random_weight(dtype, 97, 65, 11);
      const Nf4Weight w = quantize(weight, dq, pool);
      expect_matches_reference(weight, w);
      const Tensor full = dequantize(w, DType::F32, pool);
      const float* expected = full.data_as<const float>();
      std::vector<float> rows(size_t(97 * 65));
      for (int64_t begin = 0; begin < 97; ++begin) {
        for (int64_t count = 0; begin + count <= 97; ++count) {
          dequantize_rows(w, begin, count, rows.data());
          ASSERT_EQ(
              std::memcmp(rows.data(), expected + begin * 65, size_t(count * 65) * sizeof(float)),
              0)
              << "rows " << begin << " + " << count;
        }
      }
    }
  }
}

TEST_F(CodecEdges, SeveralNestedBlocksWithAPartialLastOne) {
  // 300 blocks of 64: nested blocks of 256 and 44 absmax values.
  const Tensor weight = test::make_weight(DType::BF16, 300, 64, [](int64_t k) {
    return std::sin(0.01f * float(k)) * (1.0f + float((k / 64) % 13));
  });
  const Nf4Weight w = quantize(weight, true, pool);
  ASSERT_EQ(w.nested_absmax.numel(), 2);
  const Nf4Weight plain = quantize(weight, false, pool);
  const float* absmax = plain.absmax.data_as<float>();
  double sum = 0;
  for (int64_t b = 0; b < 300; ++b)
    sum += absmax[b];
  EXPECT_EQ(w.nested_offset, float(sum / 300.0));
  const auto& map = dynamic_map();
  for (int64_t j = 0; j < 2; ++j) {
    float nested = 0;
    for (int64_t b = 256 * j; b < std::min<int64_t>(300, 256 * (j + 1)); ++b) {
      nested = std::max(nested, std::fabs(absmax[b] - w.nested_offset));
    }
    EXPECT_EQ(w.nested_absmax.data_as<float>()[j], nested) << j;
    for (int64_t b = 256 * j; b < std::min<int64_t>(300, 256 * (j + 1)); ++b) {
      const float x = (absmax[b] - w.nested_offset) * (1.0f / nested);
      const int code = w.absmax.data_as<uint8_t>()[b];
      // Nearest entry of the map: no other entry is strictly closer.
      for (int other = 0; other < kNestedCodes; ++other) {
        ASSERT_LE(std::fabs(x - map[size_t(code)]), std::fabs(x - map[size_t(other)]))
            << "block " << b << " code " << code << " vs " << other;
      }
    }
  }
  expect_matches_reference(weight, w);
}

TEST_F(CodecEdges, EveryValidBlockSizeQuantizesAndRoundTrips) {
  const Tensor weight = test::random_weight(DType::BF16, 16, 520, 5);
  for (int64_t block_size : kValidBlockSizes) {
    SCOPED_TRACE(block_size);
    const Nf4Weight w = quantize(weight, true, pool, block_size);
    EXPECT_EQ(w.blocks(), (16 * 520 + block_size - 1) / block_size);
    expect_matches_reference(weight, w);
    const QuantState state = parse_quant_state(quant_state_json(w), "json");
    EXPECT_EQ(state.block_size, block_size);
  }
}

TEST_F(CodecEdges, ResultDoesNotDependOnTheThreadCount) {
  const Tensor weight = test::random_weight(DType::BF16, 130, 192, 9);
  const Nf4Weight one = quantize(weight, true, *std::make_unique<ThreadPool>(1));
  for (int threads : {2, 3, 5}) {
    ThreadPool many(threads);
    const Nf4Weight w = quantize(weight, true, many);
    EXPECT_EQ(test::bytes_of(w.packed), test::bytes_of(one.packed)) << threads;
    EXPECT_EQ(test::bytes_of(w.absmax), test::bytes_of(one.absmax)) << threads;
    EXPECT_EQ(test::bytes_of(w.nested_absmax), test::bytes_of(one.nested_absmax)) << threads;
    EXPECT_EQ(test::bytes_of(dequantize(w, DType::BF16, many)),
              test::bytes_of(dequantize(one, DType::BF16, pool)));
  }
}

TEST_F(CodecEdges, DequantizeToAnotherDtypeRoundsTheOriginalValues) {
  const Tensor weight = test::random_weight(DType::F32, 8, 64, 13);
  const Nf4Weight w = quantize(weight, true, pool);
  const std::vector<float> f32 = test::floats_of(dequantize(w, DType::F32, pool));
  const Tensor bf16 = dequantize(w, DType::BF16, pool);
  const Tensor f16 = dequantize(w, DType::F16, pool);
  for (size_t k = 0; k < f32.size(); ++k) {
    EXPECT_EQ(bf16.data_as<uint16_t>()[k], float_to_bf16(f32[k]));
    EXPECT_EQ(f16.data_as<uint16_t>()[k], float_to_fp16(f32[k]));
  }
}

TEST_F(CodecEdges, BadInputsAreErrors) {
  test::expect_error([&] { quantize(Tensor::zeros(DType::BF16, {64}), false, pool); },
                     {"non-empty matrix", "[64]"});
  test::expect_error(
      [&] {
        quantize(Tensor::zeros(DType::BF16, {0, 64}), false, pool);
      },
      {"non-empty matrix"});
  test::expect_error(
      [&] {
        quantize(Tensor::zeros(DType::I32, {2, 64}), false, pool);
      },
      {"I32 is not BF16, F16 or F32"});
  test::expect_error(
      [&] {
        quantize(Tensor::zeros(DType::BF16, {2, 64}), false, pool, 48);
      },
      {"block size 48"});
  Tensor weight = test::random_weight(DType::F32, 4, 64, 2);
  weight.data_as<float>()[2 * 64 + 5] = std::numeric_limits<float>::infinity();
  test::expect_error([&] { quantize(weight, true, pool); }, {"element [2, 5] is inf"});

  const Nf4Weight w = quantize(test::random_weight(DType::F32, 4, 64, 2), true, pool);
  std::vector<float> out(64 * 4);
  test::expect_error([&] { dequantize_rows(w, 3, 2, out.data()); }, {"rows [3, 5)", "4 rows"});
  test::expect_error([&] { dequantize(w, DType::U8, pool); }, {"output dtype U8"});
  Nf4Weight broken = w;
  broken.absmax = Tensor::zeros(DType::F32, {4});
  test::expect_error([&] { dequantize_rows(broken, 0, 1, out.data()); },
                     {"double-quantized absmax is not U8"});
}

TEST(QuantizationConfig, WritesCompute16BitAndSkipModules) {
  const nlohmann::json config = quantization_config(false, DType::F16, {"lm_head"});
  EXPECT_EQ(config["bnb_4bit_compute_dtype"], "float16");
  EXPECT_EQ(config["bnb_4bit_use_double_quant"], false);
  EXPECT_EQ(config["llm_int8_skip_modules"], nlohmann::json::array({"lm_head"}));
  EXPECT_EQ(config.size(), 13u);
  test::expect_error([] { quantization_config(true, DType::I32, {}); }, {"I32"});
}

}  // namespace
}  // namespace llamaq::nf4
