// read_bnb_weight on broken checkpoints: each corruption of a fixture's tensor group is an Error
// whose message names the file, the tensor and the problem.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "io/checkpoint.h"
#include "quant/bnb_tensors.h"
#include "quant/quant_test_support.h"
#include "test_util.h"

namespace llamaq::nf4 {
namespace {

namespace fs = std::filesystem;

// down_proj of layer 0: [128, 320] in the plain fixture, [256, 704] in the double-quant one.
constexpr const char* kWeight = "model.layers.0.mlp.down_proj.weight";

struct Group {
  const char* fixture;
  int64_t rows;
  int64_t cols;
};
constexpr Group kPlain = {"tiny-llama31-bnb-nf4-nodq", 128, 320};
constexpr Group kNested = {"tiny-hd128-sharded-bnb-nf4", 256, 704};

std::string key(const char* suffix) {
  return std::string(kWeight) + suffix;
}
const std::string kState = key(".quant_state.bitsandbytes__nf4");

test::TensorMap fixture_tensors(const Group& group) {
  return test::read_safetensors(test::model_dir(group.fixture) / "model.safetensors");
}

void set_json(test::TensorMap& tensors, const std::string& name, const std::string& json) {
  tensors[name] = {
      DType::U8, {int64_t(json.size())}, std::vector<uint8_t>(json.begin(), json.end())};
}

std::string json_of(const test::TensorMap& tensors, const std::string& name) {
  const auto& bytes = tensors.at(name).bytes;
  return std::string(bytes.begin(), bytes.end());
}

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

// Writes `tensors` as a checkpoint and expects reading the group to fail with `parts`, plus the
// checkpoint file name in every message.
void expect_read_error(const test::TensorMap& tensors, const Group& group,
                       std::initializer_list<std::string> parts) {
  test::TempDir dir;
  test::write_checkpoint(dir.path(), tensors);
  const auto checkpoint = CheckpointTensors::open(dir.path());
  std::vector<std::string> used;
  test::expect_error([&] { read_bnb_weight(checkpoint, kWeight, group.rows, group.cols, used); },
                     parts);
  test::expect_error([&] { read_bnb_weight(checkpoint, kWeight, group.rows, group.cols, used); },
                     {(dir / "model.safetensors").string()});
}

TEST(BnbErrors, UnchangedFixturesRead) {
  for (const Group& group : {kPlain, kNested}) {
    test::TempDir dir;
    test::write_checkpoint(dir.path(), fixture_tensors(group));
    std::vector<std::string> used;
    EXPECT_NO_THROW(read_bnb_weight(CheckpointTensors::open(dir.path()), kWeight, group.rows,
                                    group.cols, used));
  }
}

TEST(BnbErrors, WrongNibbleCount) {
  auto tensors = fixture_tensors(kPlain);
  auto& packed = tensors.at(kWeight);
  packed.bytes.pop_back();
  packed.shape = {int64_t(packed.bytes.size()), 1};
  expect_read_error(tensors, kPlain,
                    {"tensor `" + std::string(kWeight) + "`", "holds 20479 bytes",
                     "expected (n+1)/2 = 20480 for 40960 elements"});
}

TEST(BnbErrors, AbsmaxLengthMismatch) {
  auto tensors = fixture_tensors(kPlain);
  auto& absmax = tensors.at(key(".absmax"));
  absmax.bytes.resize(absmax.bytes.size() - 4);
  absmax.shape = {639};
  expect_read_error(tensors, kPlain,
                    {"tensor `" + key(".absmax") + "`", "[639] (639 values), expected 640 values",
                     "one absmax per block"});
}

TEST(BnbErrors, AbsmaxDtypeMismatch) {
  auto plain = fixture_tensors(kPlain);
  auto& absmax = plain.at(key(".absmax"));
  absmax.dtype = DType::I32;  // same byte count, wrong type
  expect_read_error(plain, kPlain,
                    {"tensor `" + key(".absmax") + "`", "has dtype I32, expected F32",
                     "absmax without double quantization"});

  auto nested = fixture_tensors(kNested);
  auto& codes = nested.at(key(".absmax"));
  codes.dtype = DType::I8;
  expect_read_error(nested, kNested,
                    {"tensor `" + key(".absmax") + "`", "has dtype I8, expected U8",
                     "absmax codes with double quantization"});
}

TEST(BnbErrors, UnknownQuantType) {
  auto tensors = fixture_tensors(kPlain);
  set_json(tensors, kState,
           replaced(json_of(tensors, kState), R"("quant_type": "nf4")", R"("quant_type": "nf5")"));
  expect_read_error(tensors, kPlain,
                    {"tensor `" + kState + "`", "unknown quant_type \"nf5\"", "nf4", "fp4"});
}

TEST(BnbErrors, QuantTypeNotMatchingTheKeySuffix) {
  auto tensors = fixture_tensors(kPlain);
  set_json(tensors, kState,
           replaced(json_of(tensors, kState), R"("quant_type": "nf4")", R"("quant_type": "fp4")"));
  expect_read_error(tensors, kPlain,
                    {"tensor `" + kState + "`",
                     "quant_type \"fp4\" does not match the key suffix bitsandbytes__nf4"});
}

TEST(BnbErrors, CorruptQuantStateJson) {
  auto tensors = fixture_tensors(kNested);
  const std::string json = json_of(tensors, kState);
  set_json(tensors, kState, json.substr(0, json.size() / 2));
  expect_read_error(tensors, kNested, {"tensor `" + kState + "`", "corrupt quant_state JSON"});
}

TEST(BnbErrors, JsonShapeNotMatchingTheExpectedShape) {
  auto tensors = fixture_tensors(kPlain);
  set_json(tensors, kState,
           replaced(json_of(tensors, kState), R"("shape": [128, 320])", R"("shape": [320, 128])"));
  expect_read_error(tensors, kPlain,
                    {"tensor `" + kState + "`",
                     "quant_state shape [320, 128] does not match the expected weight shape "
                     "[128, 320]"});
}

TEST(BnbErrors, MissingAbsmaxTensor) {
  auto tensors = fixture_tensors(kNested);
  tensors.erase(key(".absmax"));
  expect_read_error(tensors, kNested, {"missing tensor `" + key(".absmax") + "`", "block scales"});
}

TEST(BnbErrors, BadBlocksize) {
  auto tensors = fixture_tensors(kNested);
  set_json(tensors, kState,
           replaced(json_of(tensors, kState), R"("blocksize": 64)", R"("blocksize": 48)"));
  expect_read_error(
      tensors, kNested,
      {"tensor `" + kState + "`", "\"blocksize\" 48 is not a bitsandbytes block size"});
}

TEST(BnbErrors, MissingQuantStateNamesTheExpectedKey) {
  auto tensors = fixture_tensors(kPlain);
  tensors.erase(kState);
  expect_read_error(tensors, kPlain, {"missing tensor `" + kState + "`", "quant_state"});
}

TEST(BnbErrors, BothNf4AndFp4QuantStates) {
  auto tensors = fixture_tensors(kPlain);
  tensors[key(".quant_state.bitsandbytes__fp4")] = tensors.at(kState);
  expect_read_error(tensors, kPlain, {"both a bitsandbytes__nf4 and a bitsandbytes__fp4"});
}

TEST(BnbErrors, WrongCodeBook) {
  auto tensors = fixture_tensors(kPlain);
  auto& map = tensors.at(key(".quant_map"));
  const float wrong = 0.5f;
  std::memcpy(map.bytes.data() + 4 * 9, &wrong, sizeof(float));
  expect_read_error(tensors, kPlain,
                    {"tensor `" + key(".quant_map") + "`", "entry 9 is 0.5", "nf4 code book"});
}

TEST(BnbErrors, NonFiniteAbsmax) {
  auto tensors = fixture_tensors(kPlain);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(tensors.at(key(".absmax")).bytes.data() + 4 * 17, &nan, sizeof(float));
  expect_read_error(tensors, kPlain, {"tensor `" + key(".absmax") + "`", "value 17 is nan"});
}

TEST(BnbErrors, NestedTensorsOfTheWrongSize) {
  auto tensors = fixture_tensors(kNested);
  auto& nested = tensors.at(key(".nested_absmax"));
  nested.bytes.resize(nested.bytes.size() - 4);
  nested.shape = {10};
  expect_read_error(tensors, kNested,
                    {"tensor `" + key(".nested_absmax") + "`", "expected 11 values"});

  tensors = fixture_tensors(kNested);
  tensors.erase(key(".nested_quant_map"));
  expect_read_error(tensors, kNested, {"missing tensor `" + key(".nested_quant_map") + "`"});
}

TEST(BnbErrors, NestedTensorsWithoutNestedKeys) {
  auto tensors = fixture_tensors(kPlain);
  tensors[key(".nested_absmax")] = {DType::F32, {3}, std::vector<uint8_t>(12)};
  expect_read_error(tensors, kPlain,
                    {"`" + key(".nested_absmax") + "` exists but the quant_state has no nested_*"});
}

TEST(BnbErrors, QuantStateThatIsNotBytes) {
  auto tensors = fixture_tensors(kPlain);
  auto& blob = tensors.at(kState);
  blob.bytes.resize(blob.bytes.size() / 4 * 4);
  blob.dtype = DType::F32;
  blob.shape = {int64_t(blob.bytes.size() / 4)};
  expect_read_error(tensors, kPlain, {"tensor `" + kState + "`", "has dtype F32, expected U8"});
}

}  // namespace
}  // namespace llamaq::nf4
