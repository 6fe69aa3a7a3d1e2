// The CPU fast linear (Google Benchmark): NF4 weights of the Llama-3.2-1B MLP shape [8192, 2048]
// against 1 token (decode: bound by memory, reported as weight bytes per second) and 128 tokens
// (prompt: bound by the int8 dot products, reported as multiply-adds per second), on 1 and 2
// threads. The weights rotate through 96 MiB so that every call streams them from memory, as a
// decode step does.
#include <benchmark/benchmark.h>

#include <random>

#include "backend/cpu/fast_linear.h"
#include "backend/cpu/isa.h"
#include "quant/nf4_codec.h"

namespace llamaq::cpu {
namespace {

constexpr int64_t kRows = 8192, kCols = 2048, kWeights = 24;

Tensor random_f32(int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t = Tensor::zeros(DType::F32, {rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data_as<float>()[i] = normal(rng);
  return t;
}

const std::vector<LinearWeight>& weights() {
  static const std::vector<LinearWeight> all = [] {
    ThreadPool pool(0);
    const Tensor dense = random_f32(kRows, kCols, 1);
    std::vector<LinearWeight> out;
    for (int64_t i = 0; i < kWeights; ++i) {
      out.push_back(prepare_fast_linear(LinearWeight::quantized(
          std::make_shared<nf4::Nf4Weight>(nf4::quantize(dense, true, pool)))));
    }
    return out;
  }();
  return all;
}

void BM_Nf4Linear(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  ThreadPool pool(int(state.range(1)));
  const KernelTable kernels = kernels_for(best_isa());
  const Tensor x = random_f32(tokens, kCols, 2);
  Tensor out = Tensor::zeros(DType::F32, {tokens, kRows});
  LinearScratch scratch;
  weights();  // quantized once, before the timing
  size_t next = 0;
  for (auto _ : state) {
    fast_linear(pool, kernels, x, weights()[next], out, scratch);
    next = (next + 1) % weights().size();
  }
  const double calls = double(state.iterations());
  // Weight bytes per call: 4-bit codes plus one double-quantized scale byte per 64 weights.
  state.SetBytesProcessed(int64_t(calls * (kRows * kCols / 2 + kRows * kCols / 64)));
  state.counters["MAC/s"] =
      benchmark::Counter(calls * double(tokens * kRows * kCols), benchmark::Counter::kIsRate);
}
// The same kernel on one [512, 2048] weight that stays in L2: what the instructions alone allow.
void BM_Nf4LinearCached(benchmark::State& state) {
  ThreadPool pool(int(state.range(0)));
  const KernelTable kernels = kernels_for(best_isa());
  ThreadPool quantizer(0);
  const auto w = prepare_fast_linear(LinearWeight::quantized(
      std::make_shared<nf4::Nf4Weight>(nf4::quantize(random_f32(512, kCols, 3), true, quantizer))));
  const Tensor x = random_f32(1, kCols, 2);
  Tensor out = Tensor::zeros(DType::F32, {1, 512});
  LinearScratch scratch;
  for (auto _ : state)
    fast_linear(pool, kernels, x, w, out, scratch);
  state.SetBytesProcessed(
      int64_t(double(state.iterations()) * (512 * kCols / 2 + 512 * kCols / 64)));
}
BENCHMARK(BM_Nf4LinearCached)
    ->Arg(1)
    ->Arg(2)
    ->ArgName("threads")
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK(BM_Nf4Linear)
    ->ArgsProduct({{1, 128}, {1, 2}})
    ->ArgNames({"tokens", "threads"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace llamaq::cpu

BENCHMARK_MAIN();
