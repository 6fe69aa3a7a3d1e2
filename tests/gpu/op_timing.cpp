// gpu_op_timing: device time per call of the main CUDA ops at Llama 3 8B shapes, with the bytes
// or flops each must move or do, so that the numbers read against the roofline. Not a test:
//   build-*/tests/gpu/gpu_op_timing
// Each op runs 3 times to warm up, then 50 times back to back on the backend's stream: device
// time per call from events around the 50 (launch gaps included when the host is slower), and
// host time per call to enqueue them (what a CUDA graph would remove). Weights rotate among
// copies larger than L2 together, so the GEMVs read from memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/ops.h"
#include "core/thread_pool.h"
#include "quant/nf4_codec.h"

namespace llamaq {
namespace {

std::mt19937 rng(3);

Tensor random_host(DType dtype, Shape shape, float scale) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::F32)
      t.data_as<float>()[i] = u(rng);
    else
      t.data_as<uint16_t>()[i] = float_to_bf16(u(rng));
  }
  return t;
}

struct Timing {
  double device_ms;  // per call
  double host_us;    // per call, to enqueue
};

Timing time_op(cuda::CudaBackend& gpu, const std::function<void(int)>& op) {
  constexpr int kCalls = 50;
  cudaStream_t stream = gpu.context().stream();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i)
    op(i);
  cudaStreamSynchronize(stream);
  cudaEventRecord(start, stream);
  const auto host_start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i)
    op(i);
  const auto host_end = std::chrono::steady_clock::now();
  cudaEventRecord(stop, stream);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double host_us = std::chrono::duration<double, std::micro>(host_end - host_start).count();
  return {double(ms) / kCalls, host_us / kCalls};
}

void report(const char* name, Timing t, double bytes, double flops) {
  std::printf("| %-40s | %9.4f | %7.1f | %8.1f | %8.2f |\n", name, t.device_ms, t.host_us,
              bytes / t.device_ms / 1e6, flops / t.device_ms / 1e9);
}

void time_linears(cuda::CudaBackend& gpu) {
  constexpr int kCopies = 4;
  const int64_t out = 14336, in = 4096;
  ThreadPool pool(0);
  std::vector<std::shared_ptr<const nf4::Nf4Weight>> nf4s;
  std::vector<Tensor> dense;
  for (int c = 0; c < kCopies; ++c) {
    const Tensor w = random_host(DType::BF16, {out, in}, 0.05f);
    nf4s.push_back(gpu.device_nf4(std::make_shared<nf4::Nf4Weight>(nf4::quantize(w, true, pool))));
    dense.push_back(gpu.upload(w));
  }
  const double nf4_bytes = double(out * in) / 2 + double(out * in) / 64;
  for (int64_t n : {1, 8, 512}) {
    const Tensor x = gpu.upload(random_host(DType::F32, {n, in}, 1.0f));
    Tensor y = gpu.alloc(DType::F32, {n, out});
    const double flops = 2.0 * double(n * out * in);
    char name[96];
    std::snprintf(name, sizeof name, "linear nf4 %ldx%ld n=%ld", long(out), long(in), long(n));
    report(name,
           time_op(gpu, [&](int i) { cuda::linear_nf4(gpu.context(), x, *nf4s[i % kCopies], y); }),
           nf4_bytes, flops);
    std::snprintf(name, sizeof name, "linear bf16 %ldx%ld n=%ld", long(out), long(in), long(n));
    report(
        name,
        time_op(gpu, [&](int i) { cuda::linear_dense(gpu.context(), x, dense[i % kCopies], y); }),
        2.0 * double(out * in), flops);
  }
}

void time_attention(cuda::CudaBackend& gpu) {
  const int64_t heads = 32, kv_heads = 8, dim = 128, block = 16;
  for (const auto& [start, n] : {std::pair<int64_t, int64_t>{4095, 1}, {0, 1024}, {0, 4096}}) {
    const int64_t blocks = (start + n + block - 1) / block;
    const Tensor k = gpu.upload(random_host(DType::F32, {blocks, block, kv_heads, dim}, 1.0f));
    const Tensor v = gpu.upload(random_host(DType::F32, {blocks, block, kv_heads, dim}, 1.0f));
    std::vector<int32_t> table(static_cast<size_t>(blocks)), pos(static_cast<size_t>(n));
    std::iota(table.begin(), table.end(), 0);
    std::iota(pos.begin(), pos.end(), int32_t(start));
    Tensor table_gpu = gpu.alloc(DType::I32, {blocks});
    gpu.copy_from_host(table_gpu, table.data());
    Tensor positions = gpu.alloc(DType::I32, {n});
    gpu.copy_from_host(positions, pos.data());
    const Tensor q = gpu.upload(random_host(DType::F32, {n, heads, dim}, 1.0f));
    Tensor out = gpu.alloc(DType::F32, {n, heads * dim});
    const KvLayerView kv{k, v, table_gpu, block};
    const double keys = double(start) * double(n) + double(n) * double(n + 1) / 2;  // visible pairs
    const double flops = 4.0 * keys * double(heads * dim);
    const double bytes = 2.0 * double(start + n) * double(kv_heads * dim) * 4;
    char name[96];
    std::snprintf(name, sizeof name, "attention 32/8x128 start=%ld n=%ld", long(start), long(n));
    report(name, time_op(gpu, [&](int) { gpu.attention(q, positions, kv, out); }), bytes, flops);
  }
}

void time_small_ops(cuda::CudaBackend& gpu) {
  for (int64_t n : {1, 512}) {
    const Tensor x = gpu.upload(random_host(DType::F32, {n, 14336}, 1.0f));
    const Tensor y = gpu.upload(random_host(DType::F32, {n, 14336}, 1.0f));
    Tensor out = gpu.alloc(DType::F32, {n, 14336});
    char name[96];
    std::snprintf(name, sizeof name, "swiglu %ldx14336", long(n));
    report(name, time_op(gpu, [&](int) { gpu.swiglu(x, y, out); }), 12.0 * double(n * 14336), 0);
    const Tensor h = gpu.upload(random_host(DType::F32, {n, 4096}, 1.0f));
    const Tensor w = gpu.upload(random_host(DType::BF16, {4096}, 1.0f));
    Tensor normed = gpu.alloc(DType::F32, {n, 4096});
    std::snprintf(name, sizeof name, "rmsnorm %ldx4096", long(n));
    report(name, time_op(gpu, [&](int) { gpu.rmsnorm(h, w, 1e-5f, normed); }),
           8.0 * double(n * 4096), 0);
    Tensor q = gpu.upload(random_host(DType::F32, {n, 32, 128}, 1.0f));
    std::vector<int32_t> pos(static_cast<size_t>(n));
    std::iota(pos.begin(), pos.end(), 100);
    Tensor positions = gpu.alloc(DType::I32, {n});
    gpu.copy_from_host(positions, pos.data());
    const Tensor freq = gpu.upload(random_host(DType::F32, {64}, 0.5f));
    std::snprintf(name, sizeof name, "rope %ldx32x128", long(n));
    report(name, time_op(gpu, [&](int) { gpu.rope(q, positions, freq); }), 8.0 * double(n * 4096),
           0);
  }
}

}  // namespace
}  // namespace llamaq

int main() {
  llamaq::cuda::CudaBackend gpu(0);
  std::printf("| op | device ms | host us | GB/s | TFLOP/s |\n|---|---|---|---|---|\n");
  llamaq::time_linears(gpu);
  llamaq::time_attention(gpu);
  llamaq::time_small_ops(gpu);
  return 0;
}
