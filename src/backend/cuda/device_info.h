// CUDA device discovery and a smoke kernel (vector add) that proves the toolchain and the driver
// work together; the GPU test compares it with the CPU.
#pragma once

#include <string>
#include <vector>

namespace llamaq::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
};

// Throws llamaq::Error when no CUDA device or driver is usable.
std::vector<DeviceInfo> list_devices();

// out[i] = a[i] + b[i] on device 0 (host vectors in and out).
std::vector<float> add_vectors(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace llamaq::cuda
