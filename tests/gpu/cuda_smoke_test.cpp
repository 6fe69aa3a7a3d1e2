#include <gtest/gtest.h>

#include "backend/cuda/device_info.h"
#include "gpu_test_support.h"

namespace llamaq {
namespace {

TEST(CudaSmoke, FindsAnAmpereOrNewerDevice) {
  LLAMAQ_REQUIRE_CUDA_DEVICE();
  const auto devices = cuda::list_devices();
  ASSERT_FALSE(devices.empty());
  EXPECT_GE(devices[0].compute_major, 8) << devices[0].name;
  EXPECT_GT(devices[0].total_memory, size_t(1) << 30);
}

TEST(CudaSmoke, AddKernelMatchesTheCpu) {
  LLAMAQ_REQUIRE_CUDA_DEVICE();
  std::vector<float> a(1025), b(1025);  // odd size: the tail block is partly masked
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = float(i) * 0.5f;
    b[i] = 3.0f - float(i);
  }
  const auto out = cuda::add_vectors(a, b);
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(out[i], a[i] + b[i]) << i;  // exact in fp32
}

}  // namespace
}  // namespace llamaq
