// The CPU fast linear (Google Benchmark): NF4 weights of the Llama-3.2-1B up projection [8192,
// 2048] and the Llama-3-8B down projection [4096, 14336] against 1 token (decode: bound by memory,
// reported as weight bytes per second) and 128 tokens (prompt: bound by the int8 dot products,
// reported as multiply-adds per second), on 1 and 2 threads. The weights rotate through 96 MiB or
// more so that every call streams them from memory, as a decode step does.
#include <benchmark/benchmark.h>

#include <array>
#include <random>

#include "backend/cpu/fast_linear.h"
#include "backend/cpu/isa.h"
#include "quant/nf4_codec.h"

namespace llamaq::cpu {
namespace {

constexpr int64_t kCols = 2048;  // the L2-resident case's input width

struct WeightShape {
  int64_t rows, cols, count;  // count: how many distinct weights the calls rotate through
};
constexpr WeightShape kShapes[] = {{8192, 2048, 24}, {4096, 14336, 8}};

Tensor random_f32(int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t = Tensor::zeros(DType::F32, {rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data_as<float>()[i] = normal(rng);
  return t;
}

const std::vector<LinearWeight>& weights(int shape_index) {
  static std::vector<LinearWeight> all[std::size(kShapes)];
  if (!all[shape_index].empty()) return all[shape_index];
  const WeightShape& shape = kShapes[shape_index];
  all[shape_index] = [&] {
    ThreadPool pool(0);
    const Tensor dense = random_f32(shape.rows, shape.cols, 1);
    std::vector<LinearWeight> out;
    for (int64_t i = 0; i < shape.count; ++i) {
      out.push_back(prepare_fast_linear(LinearWeight::quantized(
          std::make_shared<nf4::Nf4Weight>(nf4::quantize(dense, true, pool)))));
    }
    return out;
  }();
  return all[shape_index];
}

void BM_Nf4Linear(benchmark::State& state) {
  const int shape_index = int(state.range(0));
  const WeightShape& shape = kShapes[shape_index];
  const int64_t tokens = state.range(1);
  ThreadPool pool(int(state.range(2)));
  const KernelTable kernels = kernels_for(best_isa());
  const Tensor x = random_f32(tokens, shape.cols, 2);
  Tensor out = Tensor::zeros(DType::F32, {tokens, shape.rows});
  LinearScratch scratch;
  const std::vector<LinearWeight>& w = weights(shape_index);  // quantized before the timing
  size_t next = 0;
  for (auto _ : state) {
    fast_linear(pool, kernels, x, w[next], out, scratch);
    next = (next + 1) % w.size();
  }
  const double calls = double(state.iterations());
  const double elements = double(shape.rows * shape.cols);
  // Weight bytes per call: 4-bit codes plus one fp16 scale per 64 weights.
  state.SetBytesProcessed(int64_t(calls * (elements / 2 + elements / 32)));
  state.counters["MAC/s"] =
      benchmark::Counter(calls * double(tokens) * elements, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Nf4Linear)
    ->ArgsProduct({{0, 1}, {1, 128}, {1, 2}})
    ->ArgNames({"shape", "tokens", "threads"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK(BM_Nf4Linear)
    ->ArgsProduct({{1, 128}, {1, 2}})
    ->ArgNames({"tokens", "threads"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Llama-3-8B's q, k and v ([4096, 4096], [1024, 4096] x 2) against one token, as three calls or
// as one group (fast_linear_group), rotating through 8 sets (100 MB).
void BM_Nf4QkvDecode(benchmark::State& state) {
  const bool grouped = state.range(0) != 0;
  ThreadPool pool(2);
  const KernelTable kernels = kernels_for(best_isa());
  static const std::vector<std::array<LinearWeight, 3>> sets = [] {
    ThreadPool quantize_pool(0);
    const Tensor q = random_f32(4096, 4096, 3), kv = random_f32(1024, 4096, 4);
    auto prepared = [&](const Tensor& dense) {
      return prepare_fast_linear(LinearWeight::quantized(
          std::make_shared<nf4::Nf4Weight>(nf4::quantize(dense, true, quantize_pool))));
    };
    std::vector<std::array<LinearWeight, 3>> out;
    for (int i = 0; i < 8; ++i)
      out.push_back({prepared(q), prepared(kv), prepared(kv)});
    return out;
  }();
  const Tensor x = random_f32(1, 4096, 5);
  Tensor yq = Tensor::zeros(DType::F32, {1, 4096}), yk = Tensor::zeros(DType::F32, {1, 1024}),
         yv = Tensor::zeros(DType::F32, {1, 1024});
  Tensor* outs[] = {&yq, &yk, &yv};
  LinearScratch scratch;
  size_t next = 0;
  for (auto _ : state) {
    const std::array<LinearWeight, 3>& w = sets[next];
    if (grouped) {
      const LinearWeight* ws[] = {&w[0], &w[1], &w[2]};
      fast_linear_group(pool, kernels, x, ws, outs, scratch);
    } else {
      for (int i = 0; i < 3; ++i)
        fast_linear(pool, kernels, x, w[size_t(i)], *outs[i], scratch);
    }
    next = (next + 1) % sets.size();
  }
  const double elements = 6144.0 * 4096.0;
  state.SetBytesProcessed(int64_t(double(state.iterations()) * (elements / 2 + elements / 32)));
}
BENCHMARK(BM_Nf4QkvDecode)
    ->Arg(0)
    ->Arg(1)
    ->ArgName("grouped")
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Llama-3-8B's gate and up ([14336, 4096] x 2) against one token, as two calls or as one group,
// rotating through 4 sets (240 MB).
void BM_Nf4GateUpDecode(benchmark::State& state) {
  const bool grouped = state.range(0) != 0;
  ThreadPool pool(2);
  const KernelTable kernels = kernels_for(best_isa());
  static const std::vector<std::array<LinearWeight, 2>> sets = [] {
    ThreadPool quantize_pool(0);
    const Tensor dense = random_f32(14336, 4096, 6);
    auto prepared = [&] {
      return prepare_fast_linear(LinearWeight::quantized(
          std::make_shared<nf4::Nf4Weight>(nf4::quantize(dense, true, quantize_pool))));
    };
    std::vector<std::array<LinearWeight, 2>> out;
    for (int i = 0; i < 4; ++i)
      out.push_back({prepared(), prepared()});
    return out;
  }();
  const Tensor x = random_f32(1, 4096, 7);
  Tensor gate = Tensor::zeros(DType::F32, {1, 14336}), up = Tensor::zeros(DType::F32, {1, 14336});
  Tensor* outs[] = {&gate, &up};
  LinearScratch scratch;
  size_t next = 0;
  for (auto _ : state) {
    const std::array<LinearWeight, 2>& w = sets[next];
    if (grouped) {
      const LinearWeight* ws[] = {&w[0], &w[1]};
      fast_linear_group(pool, kernels, x, ws, outs, scratch);
    } else {
      for (int i = 0; i < 2; ++i)
        fast_linear(pool, kernels, x, w[size_t(i)], *outs[i], scratch);
    }
    next = (next + 1) % sets.size();
  }
  const double elements = 2.0 * 14336.0 * 4096.0;
  state.SetBytesProcessed(int64_t(double(state.iterations()) * (elements / 2 + elements / 32)));
}
BENCHMARK(BM_Nf4GateUpDecode)
    ->Arg(0)
    ->Arg(1)
    ->ArgName("grouped")
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace llamaq::cpu

BENCHMARK_MAIN();
