#include "backend/cuda/roofline.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"

namespace llamaq::cuda {
namespace {

constexpr int kRuns = 9;

template <typename Work>
double median_ms(CudaContext& ctx, Work&& work) {
  const char* op = "roofline";
  cudaEvent_t start = nullptr, stop = nullptr;
  check_cuda(cudaEventCreate(&start), op, "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), op, "cudaEventCreate");
  work();  // warm-up
  std::vector<float> times;
  for (int i = 0; i < kRuns; ++i) {
    check_cuda(cudaEventRecord(start, ctx.stream()), op, "cudaEventRecord");
    work();
    check_cuda(cudaEventRecord(stop, ctx.stream()), op, "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop), op, "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, start, stop), op, "cudaEventElapsedTime");
    times.push_back(ms);
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return double(times[times.size() / 2]);
}

double copy_bandwidth(CudaContext& ctx) {
  constexpr size_t kBytes = size_t(2) << 30;  // well past the 50 MB L2
  const Tensor src = ctx.zeros(DType::U8, {int64_t(kBytes)}, "roofline");
  Tensor dst = ctx.zeros(DType::U8, {int64_t(kBytes)}, "roofline");
  const double ms = median_ms(ctx, [&] {
    check_cuda(
        cudaMemcpyAsync(dst.data(), src.data(), kBytes, cudaMemcpyDeviceToDevice, ctx.stream()),
        "roofline", "cudaMemcpyAsync");
  });
  return 2.0 * double(kBytes) / (ms * 1e-3) / 1e9;
}

double gemm_rate(CudaContext& ctx) {
  constexpr int kN = 8192;
  const Tensor a = ctx.zeros(DType::BF16, {kN, kN}, "roofline");
  const Tensor b = ctx.zeros(DType::BF16, {kN, kN}, "roofline");
  Tensor c = ctx.zeros(DType::F32, {kN, kN}, "roofline");
  const double ms = median_ms(ctx, [&] {
    gemm_f32_out(ctx, "roofline", CUBLAS_OP_T, CUBLAS_OP_N, kN, kN, kN, a.data(), CUDA_R_16BF, kN,
                 b.data(), kN, 1.0f, 0.0f, c.data_as<float>(), kN);
  });
  return 2.0 * double(kN) * kN * kN / (ms * 1e-3) / 1e12;
}

}  // namespace

MeasuredPeaks measure_peaks(int device) {
  CudaContext ctx(device);
  MeasuredPeaks peaks;
  peaks.bandwidth_gb_per_s = copy_bandwidth(ctx);
  peaks.bf16_tflop_per_s = gemm_rate(ctx);
  return peaks;
}

}  // namespace llamaq::cuda
