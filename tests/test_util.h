// Helpers shared by the tests: fixture paths, temporary folders, reading tensors as f32.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace llamaq::test {

inline std::filesystem::path data_dir() { return LLAMAQ_TEST_DATA_DIR; }
inline std::filesystem::path model_dir(const std::string& name) {
  return data_dir() / "models" / name;
}

// A fresh empty folder under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Any float or integer tensor widened to double.
std::vector<double> to_doubles(const Tensor& tensor);

// ||a - b|| / ||b||.
double relative_error(const std::vector<double>& a, const std::vector<double>& b);

void write_bytes(const std::filesystem::path& path, const std::string& bytes);
std::string read_bytes(const std::filesystem::path& path);

// A test-name suffix for a fixture-name parameter: "tiny-llama31" -> "tiny_llama31".
inline std::string fixture_param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

// Expects `fn` to throw llamaq::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts);

}  // namespace llamaq::test

#include "test_util_impl.h"
