#include "bench_roofline.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/resources.h"
#ifdef LLAMAQ_HAVE_CUDA
#include "backend/cuda/roofline.h"
#endif

namespace llamaq::cli {
namespace {

// Read bandwidth of the host: `threads` threads each summing their share of a 1 GiB buffer (far
// past the caches), best of five passes after a first pass that also faults the pages in.
double host_read_bandwidth(int threads) {
  const int n_threads = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
  constexpr size_t kFloats = size_t(256) << 20;
  std::vector<float> data(kFloats, 1.0f);
  std::vector<double> sums(size_t(n_threads), 0);
  double best = 0;
  for (int pass = 0; pass < 6; ++pass) {
    const Stopwatch clock;
    std::vector<std::thread> workers;
    for (int t = 0; t < n_threads; ++t) {
      workers.emplace_back([&, t] {
        const size_t begin = kFloats * size_t(t) / size_t(n_threads);
        const size_t end = kFloats * size_t(t + 1) / size_t(n_threads);
        float acc[16] = {};
        for (size_t i = begin; i + 16 <= end; i += 16) {
          for (int j = 0; j < 16; ++j) acc[j] += data[i + size_t(j)];
        }
        double total = 0;
        for (float a : acc) total += double(a);
        sums[size_t(t)] = total;
      });
    }
    for (std::thread& w : workers) w.join();
    const double seconds = clock.seconds();
    if (pass > 0) best = std::max(best, double(kFloats * sizeof(float)) / seconds / 1e9);
  }
  return best;
}

}  // namespace

Roofline measure_roofline(const std::string& device, int threads) {
  Roofline r;
#ifdef LLAMAQ_HAVE_CUDA
  if (device == "cuda") {
    const cuda::MeasuredPeaks peaks = cuda::measure_peaks(0);
    r.bandwidth_gb_per_s = peaks.bandwidth_gb_per_s;
    r.tflop_per_s = peaks.bf16_tflop_per_s;
    r.how = fmt::format("measured: device copy {:.0f} GB/s, cuBLAS bf16 GEMM 8192^3 {:.0f} TFLOP/s",
                        r.bandwidth_gb_per_s, r.tflop_per_s);
    return r;
  }
#else
  if (device == "cuda") fail("--device cuda: this build has no CUDA backend");
#endif
  r.bandwidth_gb_per_s = host_read_bandwidth(threads);
  r.how = fmt::format("measured: host read bandwidth {:.1f} GB/s ({} threads)", r.bandwidth_gb_per_s,
                      threads > 0 ? threads : int(std::thread::hardware_concurrency()));
  return r;
}

}  // namespace llamaq::cli
