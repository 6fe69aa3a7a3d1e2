// Throughput check, not a test (disabled by default): quantize a random [4096, 4096] BF16 matrix
// with 2 threads, and dequantize_rows it a few rows at a time on one thread as the CPU linear
// does. Run with: quant_tests --gtest_also_run_disabled_tests --gtest_filter='*Throughput*'
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "quant/nf4_codec.h"
#include "quant/quant_test_support.h"

namespace llamaq::nf4 {
namespace {

constexpr int64_t kSide = 4096;

template <typename Fn>
double best_seconds(int repeats, Fn&& fn) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count());
  }
  return best;
}

TEST(DISABLED_Nf4Throughput, Quantize4096x4096Bf16AndDequantizeRows) {
  const Tensor weight = test::random_weight(DType::BF16, kSide, kSide, 42, 0.05f);
  const double elements = double(kSide * kSide);
  ThreadPool pool(2);
  for (bool dq : {false, true}) {
    const double s = best_seconds(3, [&] { quantize(weight, dq, pool); });
    std::printf("quantize %s, 2 threads: %.3f s, %.1f M elements/s\n",
                dq ? "double-quant" : "plain", s, elements / s / 1e6);
  }
  const Nf4Weight w = quantize(weight, true, pool);
  for (int64_t rows_per_call : {1, 4, 16}) {
    std::vector<float> rows(size_t(rows_per_call * kSide));
    const double s = best_seconds(3, [&] {
      for (int64_t r = 0; r < kSide; r += rows_per_call) {
        dequantize_rows(w, r, rows_per_call, rows.data());
      }
    });
    std::printf("dequantize_rows (%lld rows/call), 1 thread: %.3f s, %.1f M elements/s\n",
                static_cast<long long>(rows_per_call), s, elements / s / 1e6);
  }
  const double s = best_seconds(3, [&] { dequantize(w, DType::BF16, pool); });
  std::printf("dequantize to BF16, 2 threads: %.3f s, %.1f M elements/s\n", s, elements / s / 1e6);
}

}  // namespace
}  // namespace llamaq::nf4
