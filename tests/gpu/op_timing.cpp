// gpu_op_timing: device time per call of the main CUDA ops at Llama 3 8B shapes, with the bytes
// or flops each must move or do, so that the numbers read against the roofline. Not a test:
//   build-*/tests/gpu/gpu_op_timing [filter]    (only ops whose name contains `filter`)
// Each op runs 3 times to warm up, then 50 times back to back on the backend's stream, each call
// between its own pair of CUDA events: "median ms" is the median of those per-call times (what
// the GB/s and TFLOP/s columns use), "mean ms" the span of all 50 divided by 50 (launch gaps
// included when the host is slower), "host us" the host time per call to enqueue (what a CUDA
// graph removes). Weights rotate among copies larger than L2 together, so GEMVs read from memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/nf4_params.h"
#include "backend/cuda/ops.h"
#include "core/thread_pool.h"
#include "quant/nf4_codec.h"

namespace llamaq {
namespace {

std::mt19937 rng(3);
const char* filter = "";

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
  double median_ms;  // per call, from its own events
  double mean_ms;    // per call, back to back
  double host_us;    // per call, to enqueue
};

Timing time_op(cuda::CudaBackend& gpu, const std::function<void(int)>& op) {
  constexpr int kCalls = 50;
  cudaStream_t stream = gpu.context().stream();
  std::vector<cudaEvent_t> events(2 * kCalls);
  for (cudaEvent_t& e : events)
    cudaEventCreate(&e);
  for (int i = 0; i < 3; ++i)
    op(i);
  cudaStreamSynchronize(stream);
  const auto host_start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCalls; ++i) {
    cudaEventRecord(events[2 * i], stream);
    op(i);
    cudaEventRecord(events[2 * i + 1], stream);
  }
  const auto host_end = std::chrono::steady_clock::now();
  cudaEventSynchronize(events.back());
  std::vector<float> per_call(kCalls);
  for (int i = 0; i < kCalls; ++i)
    cudaEventElapsedTime(&per_call[i], events[2 * i], events[2 * i + 1]);
  float span = 0;
  cudaEventElapsedTime(&span, events.front(), events.back());
  for (cudaEvent_t& e : events)
    cudaEventDestroy(e);
  std::nth_element(per_call.begin(), per_call.begin() + kCalls / 2, per_call.end());
  const double host_us = std::chrono::duration<double, std::micro>(host_end - host_start).count();
  return {double(per_call[kCalls / 2]), double(span) / kCalls, host_us / kCalls};
}

bool wanted(const std::string& name) {
  return std::strstr(name.c_str(), filter) != nullptr;
}

void report(const std::string& name, const std::function<void(int)>& op, cuda::CudaBackend& gpu,
            double bytes, double flops) {
  if (!wanted(name)) return;
  const Timing t = time_op(gpu, op);
  std::printf("| %-46s | %9.4f | %9.4f | %7.1f | %8.1f | %8.2f |\n", name.c_str(), t.median_ms,
              t.mean_ms, t.host_us, bytes / t.median_ms / 1e6, flops / t.median_ms / 1e9);
  std::fflush(stdout);
}

std::string shape_name(const char* what, int64_t out, int64_t in, int64_t n) {
  return std::string(what) + " " + std::to_string(out) + "x" + std::to_string(in) +
         " n=" + std::to_string(n);
}

// Bytes of a double-quantized NF4 weight: packed nibbles, u8 absmax codes per block of 64, f32
// nested absmax per 256 blocks.
double nf4_bytes(int64_t out, int64_t in) {
  const double elements = double(out) * double(in);
  return elements / 2 + elements / 64 + elements / 64 / 256 * 4;
}

void time_linears(cuda::CudaBackend& gpu) {
  constexpr int kCopies = 4;  // 4 x 29 MB NF4 > 60 MB L2
  ThreadPool pool(0);
  const std::pair<int64_t, int64_t> shapes[] = {
      {14336, 4096}, {4096, 14336}, {4096, 4096}, {1024, 4096}};  // gate/up, down, q/o, k/v
  for (const auto& [out, in] : shapes) {
    std::vector<std::shared_ptr<const nf4::Nf4Weight>> nf4s;
    std::vector<Tensor> dense;
    for (int c = 0; c < kCopies; ++c) {
      const Tensor w = random_host(DType::BF16, {out, in}, 0.05f);
      nf4s.push_back(
          gpu.device_nf4(std::make_shared<nf4::Nf4Weight>(nf4::quantize(w, true, pool))));
      dense.push_back(gpu.upload(w));
    }
    for (int64_t n : {1, 2, 8, 32, 512, 2048}) {
      if (n > 32 && out == 1024) continue;
      const Tensor x = gpu.upload(random_host(DType::F32, {n, in}, 1.0f));
      Tensor y = gpu.alloc(DType::F32, {n, out});
      const double flops = 2.0 * double(n * out * in);
      const double activations = 4.0 * double(n) * double(in + out);
      auto nf4_path = [&](cuda::Nf4Path path) {
        return [&, path](int i) {
          cuda::linear_nf4(gpu.context(), x, *nf4s[i % kCopies], y, path, &gpu.nf4_workspace());
        };
      };
      if (n <= cuda::kNf4Dp4aMaxTokens &&
          cuda::nf4_dp4a_gemv_supported(cuda::make_nf4_params(*nf4s[0]), int(n),
                                        gpu.context().multiprocessors())) {
        report(shape_name("linear nf4 dp4a", out, in, n), nf4_path(cuda::Nf4Path::Dp4aGemv), gpu,
               nf4_bytes(out, in) + activations, flops);
      }
      if (n <= cuda::kNf4StreamMaxTokens) {
        report(shape_name("linear nf4 stream", out, in, n), nf4_path(cuda::Nf4Path::StreamGemv),
               gpu, nf4_bytes(out, in) + activations, flops);
      }
      if (n <= cuda::kNf4GemvMaxTokens) {
        report(shape_name("linear nf4 gemv", out, in, n), nf4_path(cuda::Nf4Path::FusedGemv), gpu,
               nf4_bytes(out, in) + activations, flops);
      } else {
        report(shape_name("linear nf4 dequant+gemmex", out, in, n),
               nf4_path(cuda::Nf4Path::DequantizeGemm), gpu, nf4_bytes(out, in) + activations,
               flops);
        report(shape_name("linear nf4 dequant+lt", out, in, n),
               nf4_path(cuda::Nf4Path::DequantizeLt), gpu, nf4_bytes(out, in) + activations, flops);
      }
      report(
          shape_name("linear bf16", out, in, n),
          [&](int i) { cuda::linear_dense(gpu.context(), x, dense[i % kCopies], y); }, gpu,
          2.0 * double(out * in) + activations, flops);
    }
    // The dequantizer alone: reads the NF4 weight, writes the bf16 matrix.
    for (const bool staged : {true, false}) {
      report(
          shape_name(staged ? "nf4 dequantize staged" : "nf4 dequantize direct", out, in, 0),
          [&](int i) {
            Tensor d = gpu.nf4_workspace().dense(DType::BF16, out, in);
            cuda::dequantize_nf4(gpu.context(), *nf4s[i % kCopies], d, staged);
          },
          gpu, nf4_bytes(out, in) + 2.0 * double(out * in), 0);
    }
  }
}

void time_attention(cuda::CudaBackend& gpu) {
  const int64_t heads = 32, kv_heads = 8, dim = 128, block = 16;
  const std::pair<int64_t, int64_t> cases[] = {{4095, 1}, {0, 512},  {0, 1024}, {0, 2048},
                                               {0, 4096}, {0, 8192}, {0, 16384}};
  for (const auto& [start, n] : cases) {
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
    const std::string shape = "32/8x128 start=" + std::to_string(start) + " n=" + std::to_string(n);
    auto path = [&](cuda::AttentionPath p) {
      return [&, p](int) { cuda::attention(gpu.context(), q, positions, kv, out, p); };
    };
    if (n <= 4) {
      report("attention split-kv " + shape, path(cuda::AttentionPath::SplitKv), gpu, bytes, flops);
      continue;
    }
    report("attention flash-mma " + shape, path(cuda::AttentionPath::Flash), gpu, bytes, flops);
    if (n <= 4096) {  // the fp32 kernel takes ~0.5 s per call at 16k
      report("attention flash-fp32 " + shape, path(cuda::AttentionPath::FlashFp32), gpu, bytes,
             flops);
    }
    // Scores and probabilities: 6 bytes per (head, query, key): 51 GB at 16k.
    report("attention naive " + shape, path(cuda::AttentionPath::Naive), gpu, bytes, flops);
  }
}

void time_small_ops(cuda::CudaBackend& gpu) {
  for (int64_t n : {1, 512}) {
    const Tensor x = gpu.upload(random_host(DType::F32, {n, 14336}, 1.0f));
    const Tensor y = gpu.upload(random_host(DType::F32, {n, 14336}, 1.0f));
    Tensor out = gpu.alloc(DType::F32, {n, 14336});
    report(
        "swiglu " + std::to_string(n) + "x14336", [&](int) { gpu.swiglu(x, y, out); }, gpu,
        12.0 * double(n * 14336), 0);
    const Tensor h = gpu.upload(random_host(DType::F32, {n, 4096}, 1.0f));
    const Tensor w = gpu.upload(random_host(DType::BF16, {4096}, 1.0f));
    Tensor normed = gpu.alloc(DType::F32, {n, 4096});
    report(
        "rmsnorm " + std::to_string(n) + "x4096", [&](int) { gpu.rmsnorm(h, w, 1e-5f, normed); },
        gpu, 8.0 * double(n * 4096), 0);
    Tensor q = gpu.upload(random_host(DType::F32, {n, 32, 128}, 1.0f));
    std::vector<int32_t> pos(static_cast<size_t>(n));
    std::iota(pos.begin(), pos.end(), 100);
    Tensor positions = gpu.alloc(DType::I32, {n});
    gpu.copy_from_host(positions, pos.data());
    const Tensor freq = gpu.upload(random_host(DType::F32, {64}, 0.5f));
    report(
        "rope " + std::to_string(n) + "x32x128", [&](int) { gpu.rope(q, positions, freq); }, gpu,
        8.0 * double(n * 4096), 0);
  }
}

}  // namespace
}  // namespace llamaq

int main(int argc, char** argv) {
  if (argc > 1) llamaq::filter = argv[1];
  llamaq::cuda::CudaBackend gpu(0);
  std::printf(
      "| op | median ms | mean ms | host us | GB/s | TFLOP/s |\n|---|---|---|---|---|---|\n");
  llamaq::time_linears(gpu);
  llamaq::time_attention(gpu);
  llamaq::time_small_ops(gpu);
  return 0;
}
