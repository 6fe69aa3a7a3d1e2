#include <cuda_runtime.h>

#include "backend/cuda/device_info.h"
#include "core/error.h"

namespace llamaq::cuda {
namespace {

void check(cudaError_t status, const char* what) {
  // nvcc cannot evaluate fmt's compile-time format checks, so .cu files build messages directly.
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA: ") + what + " failed: " + cudaGetErrorString(status));
  }
}

__global__ void add_kernel(const float* a, const float* b, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

}  // namespace

std::vector<DeviceInfo> list_devices() {
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  std::vector<DeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties");
    devices.push_back({i, prop.name, prop.major, prop.minor, prop.totalGlobalMem,
                       prop.multiProcessorCount});
  }
  return devices;
}

std::vector<float> add_vectors(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) throw Error("add_vectors: sizes differ");
  const int n = int(a.size());
  const size_t bytes = a.size() * sizeof(float);
  float* device = nullptr;
  check(cudaMalloc(&device, 3 * bytes + 1), "cudaMalloc");
  check(cudaMemcpy(device, a.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(device + n, b.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
  add_kernel<<<(n + 255) / 256, 256>>>(device, device + n, device + 2 * n, n);
  check(cudaGetLastError(), "add_kernel launch");
  std::vector<float> out(a.size());
  check(cudaMemcpy(out.data(), device + 2 * n, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  check(cudaFree(device), "cudaFree");
  return out;
}

}  // namespace llamaq::cuda
