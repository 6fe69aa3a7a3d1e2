// Helpers for the GPU tests: a fixture that builds the CUDA and CPU backends (skipping, with a
// visible message, only when no CUDA device exists), random host tensors, device round trips and
// the relative error ||out - ref|| / ||ref|| that every comparison uses.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace llamaq::gpu_test {

// Empty when a CUDA device is usable, otherwise why not.
std::string why_no_cuda_device();

// The CUDA backend (device 0) and the CPU reference backend for one test.
struct Backends {
  std::unique_ptr<cuda::CudaBackend> gpu;
  std::unique_ptr<Backend> cpu;
};
Backends make_backends();

// Skips the test when there is no CUDA device: the only reason a GPU test may skip.
#define LLAMAQ_REQUIRE_CUDA_DEVICE()                                               \
  do {                                                                             \
    const std::string why = ::llamaq::gpu_test::why_no_cuda_device();              \
    if (!why.empty()) GTEST_SKIP() << "no CUDA device, GPU test skipped: " << why; \
  } while (0)

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LLAMAQ_REQUIRE_CUDA_DEVICE();
    backends_ = make_backends();
  }
  cuda::CudaBackend& gpu() { return *backends_.gpu; }
  Backend& cpu() { return *backends_.cpu; }

 private:
  Backends backends_;
};

// A host tensor of uniform values in [-scale, scale) (bf16/f16 values rounded from them).
Tensor random_tensor(DType dtype, Shape shape, std::mt19937& rng, float scale = 1.0f);
// A device f32 tensor filled with NaN, so that an element the op does not write fails the check.
Tensor poisoned(Backend& gpu, Shape shape);
// A host i32 tensor with the given values.
Tensor int_tensor(const std::vector<int32_t>& values);

// Any f32/bf16/f16/i32 tensor (host or on `gpu`) widened to double on the host.
std::vector<double> host_values(Backend& gpu, const Tensor& t);

// ||a - b|| / ||b||; NaN anywhere in `a` gives infinity.
double relative_error(const std::vector<double>& a, const std::vector<double>& b);

// "worst element i of N: got x, want y" for the element of largest |a - b| (NaN first), to show
// where a failing comparison goes wrong.
std::string worst_element(const std::vector<double>& a, const std::vector<double>& b);

// Model fixtures: LLAMAQ_TEST_DATA_DIR from the environment when set (a prebuilt test binary run
// from another checkout), else the source tree's tests/data.
std::filesystem::path model_dir(const std::string& name);

}  // namespace llamaq::gpu_test
