// Agreement with the bitsandbytes-format fixtures (tests/data/models/*-bnb-nf4*, made by
// shared/tools/make_nf4_fixtures.py from the tiny models): quantizing the source projection
// weights reproduces the stored tensors, reading the stored tensors gives the same weight, both
// dequantize to `dequantized.safetensors`, and quant_state_json reproduces every stored JSON blob.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "io/checkpoint.h"
#include "quant/bnb_tensors.h"
#include "quant/nf4_codec.h"
#include "quant/quant_test_support.h"
#include "test_util.h"

namespace llamaq::nf4 {
namespace {

struct Fixture {
  const char* source;     // the unquantized model the fixture was made from
  const char* quantized;  // the bnb checkpoint folder
  bool double_quant;
};

const Fixture kFixtures[] = {
    {"tiny-hd128-sharded", "tiny-hd128-sharded-bnb-nf4", true},
    {"tiny-llama31", "tiny-llama31-bnb-nf4-nodq", false},
};

std::string fixture_name(const ::testing::TestParamInfo<Fixture>& info) {
  std::string name = info.param.quantized;
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

std::vector<uint8_t> bytes(const Tensor& t) {
  return test::bytes_of(t);
}

// Number of absmax codes that differ, failing on any difference larger than 1.
int64_t count_code_differences(const Tensor& ours, const Tensor& stored, const std::string& name) {
  int64_t differing = 0;
  for (int64_t b = 0; b < ours.numel(); ++b) {
    const int diff = int(ours.data_as<uint8_t>()[b]) - int(stored.data_as<uint8_t>()[b]);
    if (diff != 0) ++differing;
    EXPECT_LE(std::abs(diff), 1) << name << " block " << b;
  }
  return differing;
}

class FixtureParity : public ::testing::TestWithParam<Fixture> {
 protected:
  void SetUp() override {
    source = std::make_unique<CheckpointTensors>(
        CheckpointTensors::open(test::model_dir(GetParam().source)));
    quantized = std::make_unique<CheckpointTensors>(
        CheckpointTensors::open(test::model_dir(GetParam().quantized)));
    dequantized = std::make_unique<SafetensorsFile>(
        SafetensorsFile::open(test::model_dir(GetParam().quantized) / "dequantized.safetensors"));
    ASSERT_GE(dequantized->entries().size(), 14u);  // 7 projections x at least 2 layers
  }

  Tensor source_weight(const std::string& name) const {
    const auto located = source->find(name);
    EXPECT_NE(located.entry, nullptr) << name;
    return located.file->tensor(*located.entry);
  }

  Nf4Weight read(const std::string& name, const Shape& shape) const {
    std::vector<std::string> used;
    return read_bnb_weight(*quantized, name, shape[0], shape[1], used);
  }

  ThreadPool pool{2};
  std::unique_ptr<CheckpointTensors> source;
  std::unique_ptr<CheckpointTensors> quantized;
  std::unique_ptr<SafetensorsFile> dequantized;
};

TEST_P(FixtureParity, QuantizingTheSourceReproducesTheStoredTensors) {
  int64_t blocks = 0;
  int64_t differing_codes = 0;
  for (const auto& entry : dequantized->entries()) {
    SCOPED_TRACE(entry.name);
    const Nf4Weight ours = quantize(source_weight(entry.name), GetParam().double_quant, pool);
    const Nf4Weight stored = read(entry.name, entry.shape);
    EXPECT_EQ(bytes(ours.packed), bytes(stored.packed));  // byte for byte
    ASSERT_EQ(ours.absmax.dtype(), stored.absmax.dtype());
    blocks += ours.blocks();
    if (!GetParam().double_quant) {
      EXPECT_EQ(bytes(ours.absmax), bytes(stored.absmax));  // float32 absmax, bit for bit
      continue;
    }
    // The offset is the float32 mean of absmax; summed exactly in double and rounded once, it
    // equals the fixture's (float64 mean rounded to float32) bit for bit, and so do the nested
    // absmax values and the dynamic map.
    EXPECT_EQ(test::bits(ours.nested_offset), test::bits(stored.nested_offset));
    EXPECT_EQ(bytes(ours.nested_absmax), bytes(stored.nested_absmax));
    EXPECT_EQ(bytes(ours.nested_map), bytes(stored.nested_map));
    differing_codes += count_code_differences(ours.absmax, stored.absmax, entry.name);
  }
  // A mean summed differently (float32, as torch on the GPU) may shift a code by one in rare
  // blocks; ours matches the fixture's summation, so no code differs.
  EXPECT_EQ(differing_codes, 0) << "of " << blocks << " blocks";
  RecordProperty("blocks", std::to_string(blocks));
  RecordProperty("differing_absmax_codes", std::to_string(differing_codes));
}

TEST_P(FixtureParity, QuantizedSourceDequantizesToTheFixture) {
  for (const auto& entry : dequantized->entries()) {
    SCOPED_TRACE(entry.name);
    const Nf4Weight ours = quantize(source_weight(entry.name), GetParam().double_quant, pool);
    const Tensor expected = dequantized->tensor(entry);
    const Tensor deq = dequantize(ours, DType::BF16, pool);
    ASSERT_EQ(deq.shape(), expected.shape());
    // Same stored data and the same formula: identical, so well within one bf16 ulp.
    EXPECT_EQ(bytes(deq), bytes(expected));
  }
}

TEST_P(FixtureParity, ReadWeightsDequantizeExactlyToTheFixture) {
  for (const auto& entry : dequantized->entries()) {
    SCOPED_TRACE(entry.name);
    const Nf4Weight stored = read(entry.name, entry.shape);
    EXPECT_EQ(stored.quant_type, QuantType::Nf4);
    EXPECT_EQ(stored.block_size, 64);
    EXPECT_EQ(stored.original_dtype, DType::BF16);
    EXPECT_EQ(stored.double_quant, GetParam().double_quant);
    EXPECT_EQ(std::memcmp(stored.code_table.data(), kCodebook, sizeof(kCodebook)), 0);
    EXPECT_EQ(bytes(dequantize(stored, DType::BF16, pool)), bytes(dequantized->tensor(entry)));
    // The CPU linear's path: a few rows at a time.
    std::vector<float> rows(size_t(3 * stored.cols));
    dequantize_rows(stored, 5, 3, rows.data());
    const std::vector<float> expected = test::floats_of(dequantized->tensor(entry));
    for (size_t i = 0; i < rows.size(); ++i) {
      ASSERT_EQ(rows[i], expected[size_t(5 * stored.cols) + i]) << "value " << i;
    }
  }
}

TEST_P(FixtureParity, ReadReportsEveryTensorOfTheGroup) {
  const auto& entry = dequantized->entries().front();
  std::vector<std::string> used;
  read_bnb_weight(*quantized, entry.name, entry.shape[0], entry.shape[1], used);
  std::vector<std::string> expected = {entry.name + ".quant_state.bitsandbytes__nf4", entry.name,
                                       entry.name + ".quant_map", entry.name + ".absmax"};
  if (GetParam().double_quant) {
    expected.push_back(entry.name + ".nested_absmax");
    expected.push_back(entry.name + ".nested_quant_map");
  }
  std::sort(used.begin(), used.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(used, expected);
  EXPECT_TRUE(is_bnb_quantized(*quantized, entry.name));
  EXPECT_FALSE(is_bnb_quantized(*quantized, "lm_head.weight"));
  EXPECT_FALSE(is_bnb_quantized(*source, entry.name));
}

TEST_P(FixtureParity, QuantStateJsonEqualsEveryStoredBlob) {
  const std::string suffix = ".quant_state.bitsandbytes__nf4";
  int blobs = 0;
  for (const std::string& name : quantized->names()) {
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string weight = name.substr(0, name.size() - suffix.size());
    const auto blob = quantized->find(name);
    const Tensor stored = blob.file->tensor(*blob.entry);
    const std::string text(stored.data_as<const char>(), size_t(stored.numel()));
    const Shape shape = parse_quant_state(text, name).shape;
    EXPECT_EQ(quant_state_json(read(weight, shape)), text) << name;
    ++blobs;
  }
  EXPECT_EQ(blobs, int(dequantized->entries().size()));
}

TEST_P(FixtureParity, QuantizationConfigEqualsTheFixtureConfig) {
  const std::string text = test::read_bytes(test::model_dir(GetParam().quantized) / "config.json");
  const nlohmann::json config = nlohmann::json::parse(text);
  const nlohmann::json ours = quantization_config(GetParam().double_quant, DType::BF16, {});
  EXPECT_EQ(ours, config["quantization_config"]);
  EXPECT_EQ(ours.size(), 13u);
  // config.json's own text (indent 2, sorted keys) is what dump(2) writes.
  const std::string dumped = ours.dump(2);
  std::string indented;
  for (char c : dumped) {
    indented += c;
    if (c == '\n') indented += "  ";
  }
  EXPECT_NE(text.find("\"quantization_config\": " + indented), std::string::npos) << dumped;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureParity, ::testing::ValuesIn(kFixtures), fixture_name);

}  // namespace
}  // namespace llamaq::nf4
