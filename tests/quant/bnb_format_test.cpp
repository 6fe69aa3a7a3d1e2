// The bitsandbytes tensor layout written by append_bnb_tensors (names, dtypes, shapes of specs
// §2.2), write + read round trips (NF4 with and without double quantization, FP4, another
// quant_storage dtype, trailing NULs after the JSON), Python float repr and quant_state parsing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <deque>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/bnb_tensors.h"
#include "quant/nf4_codec.h"
#include "quant/quant_test_support.h"
#include "test_util.h"

namespace llamaq::nf4 {
namespace {

namespace fs = std::filesystem;

constexpr const char* kName = "model.layers.0.mlp.down_proj.weight";

// Writes the group of `w` as a one-file checkpoint in `dir` and returns the file's tensors.
test::TensorMap write_group(const test::TempDir& dir, const Nf4Weight& w,
                            const std::string& name = kName) {
  std::vector<SafetensorsTensorData> tensors;
  std::deque<std::string> storage;
  append_bnb_tensors(name, w, tensors, storage);
  write_safetensors(dir / "model.safetensors", tensors);
  return test::read_safetensors(dir / "model.safetensors");
}

Nf4Weight read_back(const fs::path& dir, const Nf4Weight& like) {
  const auto checkpoint = CheckpointTensors::open(dir);
  std::vector<std::string> used;
  return read_bnb_weight(checkpoint, kName, like.rows, like.cols, used);
}

void expect_same_weight(const Nf4Weight& a, const Nf4Weight& b) {
  EXPECT_EQ(a.rows, b.rows);
  EXPECT_EQ(a.cols, b.cols);
  EXPECT_EQ(a.block_size, b.block_size);
  EXPECT_EQ(a.quant_type, b.quant_type);
  EXPECT_EQ(a.original_dtype, b.original_dtype);
  EXPECT_EQ(a.double_quant, b.double_quant);
  EXPECT_EQ(test::bytes_of(a.packed), test::bytes_of(b.packed));
  EXPECT_EQ(test::bytes_of(a.absmax), test::bytes_of(b.absmax));
  EXPECT_EQ(std::memcmp(a.code_table.data(), b.code_table.data(), sizeof(float) * kCodes), 0);
  if (a.double_quant && b.double_quant) {
    EXPECT_EQ(test::bits(a.nested_offset), test::bits(b.nested_offset));
    EXPECT_EQ(a.nested_block_size, b.nested_block_size);
    EXPECT_EQ(test::bytes_of(a.nested_absmax), test::bytes_of(b.nested_absmax));
    EXPECT_EQ(test::bytes_of(a.nested_map), test::bytes_of(b.nested_map));
  }
}

class BnbFormat : public ::testing::Test {
 protected:
  ThreadPool pool{2};
  Tensor weight = test::random_weight(DType::BF16, 96, 80, 7, 0.05f);
};

TEST_F(BnbFormat, DoubleQuantGroupHasTheTransformersNamesDtypesAndShapes) {
  test::TempDir dir;
  const Nf4Weight w = quantize(weight, true, pool);
  const test::TensorMap file = write_group(dir, w);
  const int64_t n = 96 * 80;
  const std::string json = quant_state_json(w);
  const std::map<std::string, std::pair<DType, Shape>> expected = {
      {kName, {DType::U8, {n / 2, 1}}},
      {std::string(kName) + ".absmax", {DType::U8, {n / 64}}},
      {std::string(kName) + ".quant_map", {DType::F32, {16}}},
      {std::string(kName) + ".nested_absmax", {DType::F32, {1}}},
      {std::string(kName) + ".nested_quant_map", {DType::F32, {256}}},
      {std::string(kName) + ".quant_state.bitsandbytes__nf4", {DType::U8, {int64_t(json.size())}}},
  };
  ASSERT_EQ(file.size(), expected.size());
  for (const auto& [name, dtype_shape] : expected) {
    ASSERT_TRUE(file.count(name)) << name;
    EXPECT_EQ(file.at(name).dtype, dtype_shape.first) << name;
    EXPECT_EQ(file.at(name).shape, dtype_shape.second) << name;
  }
  const auto& blob = file.at(std::string(kName) + ".quant_state.bitsandbytes__nf4").bytes;
  EXPECT_EQ(std::string(blob.begin(), blob.end()), json);
  expect_same_weight(read_back(dir.path(), w), w);
}

TEST_F(BnbFormat, PlainGroupStoresFloatAbsmaxAndNoNestedTensors) {
  test::TempDir dir;
  const Nf4Weight w = quantize(weight, false, pool);
  const test::TensorMap file = write_group(dir, w);
  EXPECT_EQ(file.size(), 4u);
  EXPECT_EQ(file.at(std::string(kName) + ".absmax").dtype, DType::F32);
  EXPECT_FALSE(file.count(std::string(kName) + ".nested_absmax"));
  expect_same_weight(read_back(dir.path(), w), w);
}

TEST_F(BnbFormat, RewritingTheFixtureGroupsReproducesTheirTensors) {
  for (const char* fixture : {"tiny-hd128-sharded-bnb-nf4", "tiny-llama31-bnb-nf4-nodq"}) {
    SCOPED_TRACE(fixture);
    const fs::path dir = test::model_dir(fixture);
    const auto checkpoint = CheckpointTensors::open(dir);
    const test::TensorMap original = test::read_safetensors(dir / "model.safetensors");
    const auto deq = SafetensorsFile::open(dir / "dequantized.safetensors");
    std::deque<Nf4Weight> weights;
    std::vector<SafetensorsTensorData> tensors;
    std::deque<std::string> storage;
    for (const auto& entry : deq.entries()) {
      std::vector<std::string> used;
      weights.push_back(
          read_bnb_weight(checkpoint, entry.name, entry.shape[0], entry.shape[1], used));
      append_bnb_tensors(entry.name, weights.back(), tensors, storage);
    }
    for (const auto& [name, t] : original) {
      if (!deq.find(name.substr(0, name.find(".weight") + 7))) {
        tensors.push_back({name, t.dtype, t.shape, t.bytes});  // norms and embeddings as they are
      }
    }
    test::TempDir out;
    write_safetensors(out / "model.safetensors", tensors);
    const test::TensorMap rewritten = test::read_safetensors(out / "model.safetensors");
    ASSERT_EQ(rewritten.size(), original.size());
    for (const auto& [name, t] : original) {
      ASSERT_TRUE(rewritten.count(name)) << name;
      EXPECT_EQ(rewritten.at(name).dtype, t.dtype) << name;
      EXPECT_EQ(rewritten.at(name).shape, t.shape) << name;
      EXPECT_EQ(rewritten.at(name).bytes, t.bytes) << name;
    }
    // With the reference writer's header layout the whole file comes out identical.
    EXPECT_TRUE(test::read_bytes(out / "model.safetensors") ==
                test::read_bytes(dir / "model.safetensors"));
  }
}

TEST_F(BnbFormat, Fp4GroupsReadWithTheStoredFp4CodeBook) {
  test::TempDir dir;
  Nf4Weight w = quantize(weight, true, pool);
  w.quant_type = QuantType::Fp4;  // any codes are valid FP4 codes; only the code book differs
  std::memcpy(w.code_table.data(), kFp4Codebook, sizeof(kFp4Codebook));
  const test::TensorMap file = write_group(dir, w);
  EXPECT_TRUE(file.count(std::string(kName) + ".quant_state.bitsandbytes__fp4"));
  const Nf4Weight back = read_back(dir.path(), w);
  expect_same_weight(back, w);
  const std::vector<float> scales = block_scales(back);
  std::vector<float> row(80);
  dequantize_rows(back, 3, 1, row.data());
  for (int64_t c = 0; c < 80; ++c) {
    const int64_t k = 3 * 80 + c;
    const uint8_t byte = back.packed.data_as<uint8_t>()[k / 2];
    const int code = k % 2 ? byte & 15 : byte >> 4;
    const float expected =
        bf16_to_float(float_to_bf16(kFp4Codebook[code] * scales[size_t(k / 64)]));
    EXPECT_EQ(row[size_t(c)], expected) << c;
  }
}

TEST_F(BnbFormat, Fp4CodeBookMatchesTheKernelLookupTable) {
  // kernels.cu fp4_dequantization_lut, with bit 3 as the sign.
  const float lut[8] = {0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f,
                        0.5f, 0.16666667f,     0.25f};
  for (int code = 0; code < kCodes; ++code) {
    EXPECT_EQ(kFp4Codebook[code], lut[code & 7] * (code & 8 ? -1.0f : 1.0f)) << code;
  }
}

TEST_F(BnbFormat, OtherQuantStorageDtypesAreTheSameBytes) {
  test::TempDir dir;
  const Nf4Weight w = quantize(weight, true, pool);
  test::TensorMap file = write_group(dir, w);
  auto& packed = file.at(kName);
  packed.dtype = DType::BF16;  // bnb_4bit_quant_storage=bfloat16: [(n+1)/4, 1] BF16
  packed.shape = {96 * 80 / 4, 1};
  test::write_checkpoint(dir.path(), file);
  expect_same_weight(read_back(dir.path(), w), w);
}

TEST_F(BnbFormat, TrailingNulsAndWhitespaceAfterTheJsonAreIgnored) {
  test::TempDir dir;
  const Nf4Weight w = quantize(weight, true, pool);
  test::TensorMap file = write_group(dir, w);
  auto& blob = file.at(std::string(kName) + ".quant_state.bitsandbytes__nf4");
  for (uint8_t c : {'\n', ' ', '\0', '\0', '\0'})
    blob.bytes.push_back(c);
  blob.shape = {int64_t(blob.bytes.size())};
  test::write_checkpoint(dir.path(), file);
  expect_same_weight(read_back(dir.path(), w), w);
}

TEST(PythonFloatRepr, MatchesPythonForFixtureAndBoundaryValues) {
  // Expected strings are Python 3's repr() of the same doubles.
  const std::pair<double, const char*> cases[] = {
      {0.09805905073881149, "0.09805905073881149"},
      {0.1623992919921875, "0.1623992919921875"},
      {0.8642578125, "0.8642578125"},
      {double(0.1f), "0.10000000149011612"},
      {1e-05, "1e-05"},
      {2.5e-05, "2.5e-05"},
      {0.0001, "0.0001"},
      {0.00012345, "0.00012345"},
      {1.5, "1.5"},
      {-2.5, "-2.5"},
      {100.0, "100.0"},
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1e15, "1000000000000000.0"},
      {9999999999999998.0, "9999999999999998.0"},
      {1e16, "1e+16"},
      {1234567890123456.0, "1234567890123456.0"},
      {12345678901234567890.0, "1.2345678901234567e+19"},
      {1e-100, "1e-100"},
      {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {3.4028234663852886e38, "3.4028234663852886e+38"},
      {1.1754943508222875e-38, "1.1754943508222875e-38"},
  };
  for (const auto& [value, expected] : cases)
    EXPECT_EQ(python_float_repr(value), expected);
}

TEST(ParseQuantState, ReadsEveryField) {
  const QuantState s = parse_quant_state(
      R"({"quant_type": "fp4", "blocksize": 128, "dtype": "float16", "shape": [3, 5],)"
      R"( "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.25})",
      "label");
  EXPECT_EQ(s.quant_type, QuantType::Fp4);
  EXPECT_EQ(s.block_size, 128);
  EXPECT_EQ(s.dtype, DType::F16);
  EXPECT_EQ(s.shape, (Shape{3, 5}));
  EXPECT_TRUE(s.nested);
  EXPECT_EQ(s.nested_block_size, 256);
  EXPECT_EQ(s.nested_offset, 0.25f);
  const QuantState plain = parse_quant_state(
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [7, 9]})", "label");
  EXPECT_FALSE(plain.nested);
  EXPECT_EQ(plain.dtype, DType::F32);
}

TEST(ParseQuantState, RejectsMalformedFieldsNamingTheLabel) {
  const auto bad = [](const std::string& json, const std::string& problem) {
    test::expect_error([&] { parse_quant_state(json, "f.safetensors: tensor `w`"); },
                       {"f.safetensors: tensor `w`", problem});
  };
  bad("", "corrupt quant_state JSON");
  bad("[1, 2]", "not an object");
  bad(R"({"blocksize": 64, "dtype": "bfloat16", "shape": [1, 64]})", "lacks \"quant_type\"");
  bad(R"({"quant_type": 4, "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64]})",
      "\"quant_type\" is not a string");
  bad(R"({"quant_type": "nf4", "blocksize": 64.0, "dtype": "bfloat16", "shape": [1, 64]})",
      "\"blocksize\" 64.0 is not a bitsandbytes block size");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [1, 64]})",
      "\"dtype\" \"int8\" is not bfloat16, float16 or float32");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, -64]})",
      "invalid size");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": "1x64"})",
      "is not a list of sizes");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1099511627777, 2]})",
      "invalid size");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1048576, 1048576, 2]})",
      "too many elements");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64],)"
      R"( "nested_offset": 0.5})",
      "only some of nested_blocksize");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64],)"
      R"( "nested_blocksize": 256, "nested_dtype": "float16", "nested_offset": 0.5})",
      "\"nested_dtype\" \"float16\" is not float32");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64],)"
      R"( "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e39})",
      "not a finite float32 number");
  bad(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64],)"
      R"( "nested_blocksize": 100, "nested_dtype": "float32", "nested_offset": 0.5})",
      "\"nested_blocksize\" 100 is not a bitsandbytes block size");
  bad(std::string(70000, ' '), "more than the");
}

}  // namespace
}  // namespace llamaq::nf4
