// NF4 codec throughput (Google Benchmark): quantizing a [4096, 4096] bf16 matrix (2 threads) and
// dequantizing it a few rows at a time on one thread, as the CPU linear does.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>

#include "quant/nf4_codec.h"

namespace llamaq::nf4 {
namespace {

constexpr int64_t kSide = 4096;

Tensor random_bf16(int64_t rows, int64_t cols) {
  Tensor t = Tensor::zeros(DType::BF16, {rows, cols});
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  auto* data = t.data_as<uint16_t>();
  for (int64_t i = 0; i < rows * cols; ++i) data[i] = float_to_bf16(normal(rng));
  return t;
}

void BM_Quantize(benchmark::State& state) {
  const Tensor weight = random_bf16(kSide, kSide);
  ThreadPool pool(2);
  const bool double_quant = state.range(0) != 0;
  for (auto _ : state) benchmark::DoNotOptimize(quantize(weight, double_quant, pool));
  state.SetItemsProcessed(state.iterations() * kSide * kSide);
}
BENCHMARK(BM_Quantize)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_DequantizeRows(benchmark::State& state) {
  ThreadPool pool(2);
  const Nf4Weight w = quantize(random_bf16(kSide, kSide), true, pool);
  const int64_t rows_per_call = state.range(0);
  std::vector<float> rows(size_t(rows_per_call * kSide));
  for (auto _ : state) {
    for (int64_t r = 0; r < kSide; r += rows_per_call) dequantize_rows(w, r, rows_per_call, rows.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kSide * kSide);
}
BENCHMARK(BM_DequantizeRows)->Arg(1)->Arg(4)->Arg(16)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace llamaq::nf4

BENCHMARK_MAIN();
