#pragma once

#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"

namespace llamaq::test {

inline TempDir::TempDir() {
  std::random_device random;
  path_ = std::filesystem::temp_directory_path() /
          ("llamaq-test-" + std::to_string(random()) + std::to_string(random()));
  std::filesystem::create_directories(path_);
}

inline TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

inline std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> out(size_t(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (t.dtype()) {
      case DType::F32: out[i] = t.data_as<const float>()[i]; break;
      case DType::F64: out[i] = t.data_as<const double>()[i]; break;
      case DType::BF16: out[i] = bf16_to_float(t.data_as<const uint16_t>()[i]); break;
      case DType::F16: out[i] = fp16_to_float(t.data_as<const uint16_t>()[i]); break;
      case DType::I32: out[i] = t.data_as<const int32_t>()[i]; break;
      case DType::I64: out[i] = double(t.data_as<const int64_t>()[i]); break;
      case DType::U8: out[i] = t.data_as<const uint8_t>()[i]; break;
      default: ADD_FAILURE() << "to_doubles: unsupported dtype"; return {};
    }
  }
  return out;
}

inline double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, ref = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    ref += b[i] * b[i];
  }
  return std::sqrt(diff) / std::sqrt(ref);
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected llamaq::Error containing \"" << *parts.begin() << "\"";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
    }
  }
}

}  // namespace llamaq::test
