// safetensors reader/writer: the reference writer's exact bytes, round trips, and every
// validation rule of specs §3.3 with a clear error each.
#include <cstring>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace llamaq {
namespace {

std::string u64_le(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i, n >>= 8) out[size_t(i)] = char(n & 0xff);
  return out;
}

std::string make_file(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

SafetensorsHeader parse(const std::string& file) { return parse_safetensors(bytes_of(file), "t.st"); }

void expect_parse_error(const std::string& file, std::initializer_list<std::string> parts) {
  test::expect_error([&] { parse(file); }, parts);
}

TEST(SafetensorsWriter, ReproducesTheReferenceWriterByteForByte) {
  // specs §3.4 VERIFIED-RUN: save_file({"b": int32[3], "a": bf16[2,2], "c": u8[5],
  // "s": f32 scalar, "e": f16[0,3]}, metadata={"format": "pt"}).
  const int32_t b[3] = {0, 1, 2};
  const uint16_t a[4] = {0x3f80, 0x3f80, 0x3f80, 0x3f80};
  const uint8_t c[5] = {0, 0, 0, 0, 0};
  const float s = 1.5f;
  auto span = [](const auto* p, size_t n) {
    return std::span(reinterpret_cast<const uint8_t*>(p), n);
  };
  std::vector<SafetensorsTensorData> tensors = {
      {"b", DType::I32, {3}, span(b, 12)}, {"a", DType::BF16, {2, 2}, span(a, 8)},
      {"c", DType::U8, {5}, span(c, 5)},   {"s", DType::F32, {}, span(&s, 4)},
      {"e", DType::F16, {0, 3}, {}}};
  const std::string header = serialize_safetensors_header(tensors, {{"format", "pt"}});
  const std::string expected_json =
      R"({"__metadata__":{"format":"pt"},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"I32","shape":[3],"data_offsets":[4,16]},"a":{"dtype":"BF16","shape":[2,2],)"
      R"("data_offsets":[16,24]},"e":{"dtype":"F16","shape":[0,3],"data_offsets":[24,24]},)"
      R"("c":{"dtype":"U8","shape":[5],"data_offsets":[24,29]}}     )";
  EXPECT_EQ(header, u64_le(312) + expected_json);
  EXPECT_EQ(tensors[0].name, "s");
  EXPECT_EQ(tensors.back().name, "c");

  test::TempDir dir;
  write_safetensors(dir / "x.safetensors", tensors);
  const std::string file = test::read_bytes(dir / "x.safetensors");
  const std::string data("\x00\x00\xc0\x3f\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"
                         "\x80\x3f\x80\x3f\x80\x3f\x80\x3f\x00\x00\x00\x00\x00", 29);
  EXPECT_EQ(file, u64_le(312) + expected_json + data);
}

TEST(SafetensorsReader, ReadsBackWhatTheWriterWrote) {
  test::TempDir dir;
  const std::vector<float> weights = {1.0f, -2.5f, 3.25f, 0.0f, 7.0f, 8.0f};
  const std::vector<uint16_t> halves = {float_to_bf16(0.5f), float_to_bf16(-1.0f)};
  write_safetensors(dir / "m.safetensors",
                    {{"w", DType::F32, {2, 3}, bytes_of(std::string(
                         reinterpret_cast<const char*>(weights.data()), 24))},
                     {"h", DType::BF16, {2}, std::span(reinterpret_cast<const uint8_t*>(halves.data()), 4)}});
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_EQ(file.header().metadata.at("format"), "pt");
  const Tensor w = file.tensor("w");
  EXPECT_EQ(w.shape(), (Shape{2, 3}));
  EXPECT_EQ(test::to_doubles(w), std::vector<double>(weights.begin(), weights.end()));
  EXPECT_EQ(test::to_doubles(file.tensor("h")), (std::vector<double>{0.5, -1.0}));
  test::expect_error([&] { file.tensor("missing"); }, {"m.safetensors", "missing"});
}

TEST(SafetensorsReader, AcceptsWhatTheReferenceAccepts) {
  EXPECT_TRUE(parse(make_file("{}", "")).tensors.empty());
  EXPECT_TRUE(parse(make_file("  {}    ", "")).tensors.empty());  // leading spaces load
  // Unpadded header (data not 8-aligned), tensors listed out of offset order, unknown field.
  const auto h = parse(make_file(
      R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
      R"("a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":1}})",
      std::string(6, '\x01')));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].shape, (Shape{2}));
  // Empty tensors are allowed.
  EXPECT_EQ(parse(make_file(R"({"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]}})", ""))
                .tensors.size(),
            1u);
}

TEST(SafetensorsReader, CopiesMisalignedTensors) {
  test::TempDir dir;
  const float value = 3.5f;
  std::string header = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";  // 53 bytes
  ASSERT_NE((8 + header.size()) % 4, 0u);
  test::write_bytes(dir / "u.safetensors",
                    make_file(header, std::string(reinterpret_cast<const char*>(&value), 4)));
  const auto file = SafetensorsFile::open(dir / "u.safetensors");
  const Tensor t = file.tensor("x");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 4, 0u);
  EXPECT_EQ(t.data_as<const float>()[0], 3.5f);
}

TEST(SafetensorsReader, RejectsEveryMalformedFile) {
  const std::string one_f32 = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_parse_error("ab", {"t.st", "too small"});
  expect_parse_error(u64_le(100'000'001) + "{}", {"t.st", "exceeds"});
  expect_parse_error(u64_le(1000) + "{}", {"t.st", "past the end"});
  expect_parse_error(u64_le(~uint64_t(0)) + "{}", {"exceeds"});
  expect_parse_error(make_file(one_f32, std::string(9, '\0')), {"t.st", "trailing"});
  expect_parse_error(make_file(one_f32, std::string(7, '\0')), {"t.st", "truncated"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::string(12, '\0')),
                     {"invalid offset for tensor `t`"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::string(12, '\0')),
                     {"invalid offset for tensor `u`"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                               std::string(8, '\0')),
                     {"`t`", "needs 12 bytes"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})",
                               std::string(8, '\0')),
                     {"unknown dtype \"F31\""});
  expect_parse_error(make_file(R"({"__metadata__":{"a":1}})", ""), {"__metadata__", "string"});
  expect_parse_error(make_file("", ""), {"does not start with"});
  expect_parse_error(make_file("{\"t\xff\":1}", ""), {"not valid UTF-8"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                               std::string(16, '\0')),
                     {"`t` twice"});
  expect_parse_error(make_file("[1,2]", ""), {"does not start with"});
  expect_parse_error(make_file("{\"t\": ", ""), {"invalid JSON"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", ""),
                     {"non-negative integer"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", ""),
                     {"non-negative integer"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[2]}})", ""), {"missing field"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", ""),
                     {"two integers"});
  expect_parse_error(
      make_file(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", ""),
      {"overflows"});
  expect_parse_error(make_file(R"({"t":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", "x"),
                     {"whole number of bytes"});
}

TEST(AtomicFile, LeavesTheTargetUntouchedUntilCommit) {
  test::TempDir dir;
  test::write_bytes(dir / "out.txt", "old");
  {
    AtomicFileWriter writer(dir / "out.txt");
    writer.write("new content");
    EXPECT_EQ(test::read_bytes(dir / "out.txt"), "old");
  }  // destroyed without commit
  EXPECT_EQ(test::read_bytes(dir / "out.txt"), "old");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
  write_file_atomic(dir / "out.txt", "new");
  EXPECT_EQ(test::read_bytes(dir / "out.txt"), "new");
  test::expect_error([&] { write_file_atomic(dir / "no-such-dir" / "f", "x"); },
                     {"no-such-dir", "cannot create"});
}

}  // namespace
}  // namespace llamaq
