#include "gpu_test_support.h"

#include <cuda_runtime.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/cpu_backend.h"

namespace llamaq::gpu_test {

std::string why_no_cuda_device() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess)
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
  if (count == 0) return "cudaGetDeviceCount found 0 devices";
  return {};
}

Backends make_backends() {
  return Backends{std::make_unique<cuda::CudaBackend>(0), make_cpu_backend(0, cpu::Isa::Reference)};
}

Tensor random_tensor(DType dtype, Shape shape, std::mt19937& rng, float scale) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  std::uniform_real_distribution<float> uniform(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = uniform(rng);
    switch (dtype) {
      case DType::F32:
        t.data_as<float>()[i] = v;
        break;
      case DType::BF16:
        t.data_as<uint16_t>()[i] = float_to_bf16(v);
        break;
      case DType::F16:
        t.data_as<uint16_t>()[i] = float_to_fp16(v);
        break;
      default:
        ADD_FAILURE() << "random_tensor: unsupported dtype";
        return t;
    }
  }
  return t;
}

Tensor poisoned(Backend& gpu, Shape shape) {
  Tensor t = gpu.alloc(DType::F32, std::move(shape));
  const std::vector<float> nans(size_t(t.numel()), std::nanf(""));
  gpu.copy_from_host(t, nans.data());
  return t;
}

Tensor int_tensor(const std::vector<int32_t>& values) {
  Tensor t = Tensor::zeros(DType::I32, {int64_t(values.size())});
  std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

std::vector<double> host_values(Backend& gpu, const Tensor& t) {
  Tensor host = t;
  if (t.device() == Device::Cuda) {
    host = Tensor::zeros(t.dtype(), t.shape());
    gpu.copy_to_host(t, host.data());
  }
  std::vector<double> out(size_t(host.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (host.dtype()) {
      case DType::F32:
        out[i] = host.data_as<const float>()[i];
        break;
      case DType::BF16:
        out[i] = bf16_to_float(host.data_as<const uint16_t>()[i]);
        break;
      case DType::F16:
        out[i] = fp16_to_float(host.data_as<const uint16_t>()[i]);
        break;
      case DType::I32:
        out[i] = host.data_as<const int32_t>()[i];
        break;
      default:
        ADD_FAILURE() << "host_values: unsupported dtype";
        return {};
    }
  }
  return out;
}

double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0;
  double ref = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    ref += b[i] * b[i];
  }
  return std::sqrt(diff) / std::sqrt(ref);
}

std::string worst_element(const std::vector<double>& a, const std::vector<double>& b) {
  size_t worst = 0;
  double worst_diff = -1;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double diff = std::isnan(a[i]) ? INFINITY : std::abs(a[i] - b[i]);
    if (diff > worst_diff) {
      worst = i;
      worst_diff = diff;
    }
  }
  if (worst_diff < 0) return "no elements";
  return fmt::format("worst element {} of {}: got {}, want {}", worst, a.size(), a[worst],
                     b[worst]);
}

std::filesystem::path model_dir(const std::string& name) {
  const char* env = std::getenv("LLAMAQ_TEST_DATA_DIR");
  const std::filesystem::path data = env && *env ? env : LLAMAQ_TEST_DATA_DIR;
  return data / "models" / name;
}

}  // namespace llamaq::gpu_test
