// Decode steps replayed from a CUDA graph against the same steps launched op by op: the graph runs
// the same kernels on the same data, so the logits must be bitwise equal, for one sequence and for
// a batch of sequences of different lengths (per-row block tables), across many steps and after a
// sequence leaves and another joins (the staged tables change, the graph does not). Also the
// device argmax against the CPU op, the bf16 dense GEMV against cuBLAS and the CPU, and the
// profiling backend over the GPU.
#include <nlohmann/json.hpp>

#include <fstream>
#include <random>
#include <sstream>

#include "backend/cuda/ops.h"
#include "gpu_test_support.h"
#include "model/loader.h"
#include "runtime/profiler.h"
#include "test_util.h"

namespace llamaq {
namespace {

using gpu_test::host_values;
using gpu_test::relative_error;

std::vector<float> to_host(Backend& backend, const Tensor& t) {
  std::vector<float> out(size_t(t.numel()));
  backend.copy_to_host(t, out.data());
  return out;
}

// Runs prompts then `steps` decode steps of a batch; returns every step's logits.
std::vector<std::vector<float>> decode_run(LoadedModel& m, Backend& backend, bool graphs,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           int steps) {
  m.model->set_graphs_enabled(graphs);
  KvCache cache(backend, m.config, 256);
  std::vector<int> seqs;
  for (const auto& prompt : prompts) {
    seqs.push_back(cache.add_sequence());
    m.model->forward(cache, seqs.back(), prompt, LogitsFor::LastToken);
  }
  std::vector<std::vector<float>> out;
  std::vector<int32_t> next(prompts.size(), 5);
  for (int step = 0; step < steps; ++step) {
    if (step == steps / 2 && seqs.size() > 1) {  // one leaves, a new one joins at its slot
      cache.remove_sequence(seqs[0]);
      seqs[0] = cache.add_sequence();
      const int32_t first[3] = {9, 10, 11};
      m.model->forward(cache, seqs[0], first, LogitsFor::LastToken);
    }
    std::vector<SequenceInput> items;
    for (size_t i = 0; i < seqs.size(); ++i)
      items.push_back({seqs[i], std::span(&next[i], 1)});
    out.push_back(to_host(backend, m.model->forward_batch(cache, items, LogitsFor::LastToken)));
    for (size_t i = 0; i < next.size(); ++i) {
      next[i] = int32_t((next[i] * 31 + step + int(i)) % m.config.vocab_size);
    }
  }
  return out;
}

class CudaDecodeGraph : public gpu_test::GpuTest {};

TEST_F(CudaDecodeGraph, ReplayedStepsEqualEagerSteps) {
  for (const char* fixture : {"tiny-llama31", "tiny-hd128-sharded"}) {
    SCOPED_TRACE(fixture);
    LoadedModel m = load_model(gpu_test::model_dir(fixture), gpu());
    for (const auto& prompts : std::vector<std::vector<std::vector<int32_t>>>{
             {{1, 2, 3, 4, 5}},
             {{1, 2, 3}, {7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}, {4}}}) {
      SCOPED_TRACE("batch of " + std::to_string(prompts.size()));
      const auto eager = decode_run(m, gpu(), false, prompts, 40);
      const auto graphed = decode_run(m, gpu(), true, prompts, 40);
      ASSERT_EQ(eager.size(), graphed.size());
      for (size_t step = 0; step < eager.size(); ++step) {
        ASSERT_EQ(eager[step], graphed[step]) << "step " << step;
      }
    }
  }
}

TEST_F(CudaDecodeGraph, ArgmaxMatchesTheCpu) {
  std::mt19937 rng(3);
  for (int64_t vocab : {1, 7, 513, 128256}) {
    Tensor logits = gpu_test::random_tensor(DType::F32, {5, vocab}, rng);
    float* v = logits.data_as<float>();
    if (vocab > 7) {
      v[3] = 50;          // row 0: a clear winner at 3
      v[vocab + 2] = 60;  // row 1: a tie at 2 and vocab-1, the lower index wins
      v[2 * vocab - 1] = 60;
      v[2 * vocab] = std::nanf("");  // row 2: NaN never wins
      v[2 * vocab + 5] = 70;
    }
    Tensor want = cpu().alloc(DType::I32, {5});
    cpu().argmax(logits, want);
    Tensor got = gpu().alloc(DType::I32, {5});
    gpu().argmax(gpu().upload(logits), got);
    EXPECT_EQ(host_values(gpu(), got), host_values(cpu(), want)) << "vocab " << vocab;
    if (vocab > 7) {
      EXPECT_EQ(host_values(cpu(), want)[0], 3);
      EXPECT_EQ(host_values(cpu(), want)[1], 2);
      EXPECT_EQ(host_values(cpu(), want)[2], 5);
    }
  }
}

// Bound: the GEMV keeps f32 activations (only summation order differs from the CPU: 1e-4); the
// cuBLAS path rounds them to bf16 (1e-2, see linear_test.cpp).
TEST_F(CudaDecodeGraph, DenseGemvMatchesTheCpuAndCublas) {
  std::mt19937 rng(11);
  for (DType dtype : {DType::BF16, DType::F16}) {
    for (const auto& [out, in] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 8}, {97, 4104}, {1025, 1024}, {333, 14336}}) {
      const Tensor w = gpu_test::random_tensor(dtype, {out, in}, rng, 0.1f);
      const Tensor w_gpu = gpu().upload(w);
      for (int64_t n : {1, 2, 7, 8}) {
        const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng);
        Tensor want = cpu().alloc(DType::F32, {n, out});
        cpu().linear(x, LinearWeight::dense(w), want);
        Tensor gemv = gpu_test::poisoned(gpu(), {n, out});
        Tensor gemm = gpu_test::poisoned(gpu(), {n, out});
        const Tensor x_gpu = gpu().upload(x);
        cuda::linear_dense(gpu().context(), x_gpu, w_gpu, gemv, cuda::DensePath::Gemv);
        cuda::linear_dense(gpu().context(), x_gpu, w_gpu, gemm, cuda::DensePath::Gemm);
        const auto ref = host_values(cpu(), want);
        const std::string where = std::string(dtype_name(dtype)) + " " + std::to_string(out) + "x" +
                                  std::to_string(in) + " n=" + std::to_string(n);
        EXPECT_LE(relative_error(host_values(gpu(), gemv), ref), 1e-4) << where;
        EXPECT_LE(relative_error(host_values(gpu(), gemm), ref), 1e-2) << where;
      }
    }
  }
}

// One launch for q/k/v (three matrices of unequal rows, so the last block of each is partial) and
// for gate/up with SwiGLU, against the CPU's linear ops and swiglu; 1 to 8 tokens directly, and
// through the backend's linear_group / linear_swiglu (one token: the decode path). The GEMV keeps
// f32 activations, so only the summation order (and expf's last bit in SwiGLU) differs: 1e-4.
TEST_F(CudaDecodeGraph, DenseGemvGroupsMatchTheCpu) {
  std::mt19937 rng(12);
  for (DType dtype : {DType::BF16, DType::F16}) {
    for (const int64_t in : {int64_t(320), int64_t(4096)}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " in=" + std::to_string(in));
      const int64_t rows[3] = {97, 33, 33};
      const int64_t ffn = 161;
      std::vector<Tensor> host, device;
      for (const int64_t r : {rows[0], rows[1], rows[2], ffn, ffn}) {
        host.push_back(gpu_test::random_tensor(dtype, {r, in}, rng, 0.1f));
        device.push_back(gpu().upload(host.back()));
      }
      for (int64_t n : {1, 2, 7, 8}) {
        SCOPED_TRACE("n=" + std::to_string(n));
        const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng);
        const Tensor x_gpu = gpu().upload(x);
        std::vector<Tensor> outs;
        for (int i = 0; i < 3; ++i)
          outs.push_back(gpu_test::poisoned(gpu(), {n, rows[i]}));
        const Tensor* qkv[] = {&device[0], &device[1], &device[2]};
        Tensor* qkv_out[] = {&outs[0], &outs[1], &outs[2]};
        if (n == 1) {
          const LinearWeight lw[] = {LinearWeight::dense(device[0]), LinearWeight::dense(device[1]),
                                     LinearWeight::dense(device[2])};
          const LinearWeight* ws[] = {&lw[0], &lw[1], &lw[2]};
          gpu().linear_group(x_gpu, ws, qkv_out);
        } else {
          cuda::dense_gemv_group(gpu().context(), x_gpu, qkv, qkv_out, false, false);
        }
        for (int i = 0; i < 3; ++i) {
          Tensor want = cpu().alloc(DType::F32, {n, rows[i]});
          cpu().linear(x, LinearWeight::dense(host[size_t(i)]), want);
          EXPECT_LE(relative_error(host_values(gpu(), outs[size_t(i)]), host_values(cpu(), want)),
                    1e-4)
              << "matrix " << i;
        }
        Tensor product = gpu_test::poisoned(gpu(), {n, ffn});
        Tensor scratch = gpu_test::poisoned(gpu(), {n, ffn});
        if (n == 1) {
          gpu().linear_swiglu(x_gpu, LinearWeight::dense(device[3]), LinearWeight::dense(device[4]),
                              product, scratch);
        } else {
          const Tensor* gate_up[] = {&device[3], &device[4]};
          Tensor* product_out[] = {&product};
          cuda::dense_gemv_group(gpu().context(), x_gpu, gate_up, product_out, true, false);
        }
        Tensor g = cpu().alloc(DType::F32, {n, ffn}), u = cpu().alloc(DType::F32, {n, ffn});
        cpu().linear(x, LinearWeight::dense(host[3]), g);
        cpu().linear(x, LinearWeight::dense(host[4]), u);
        cpu().swiglu(g, u, g);
        EXPECT_LE(relative_error(host_values(gpu(), product), host_values(cpu(), g)), 1e-4)
            << "swiglu";
      }
    }
  }
}

TEST_F(CudaDecodeGraph, ProfilerTimesEveryOpOnTheDevice) {
  std::string why;
  auto profiler = std::make_unique<ProfilingBackend>(make_cuda_backend(0));
  ProfilingBackend& p = *profiler;
  LoadedModel m = load_model(gpu_test::model_dir("tiny-llama31"), p);
  KvCache cache(p, m.config, 64);
  const int seq = cache.add_sequence();
  const int32_t prompt[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};  // > 4 tokens: the prefill kernel
  p.begin_region("prefill");
  m.model->forward_to_host(cache, seq, prompt, LogitsFor::LastToken);
  p.begin_region("decode");
  const int32_t next[1] = {5};
  m.model->forward_to_host(cache, seq, next, LogitsFor::LastToken);
  p.end_region();
  const auto rows = p.summary();
  std::map<std::string, int64_t> calls;
  for (const auto& r : rows) {
    calls[r.name] = r.calls;
    EXPECT_GT(r.total_ms, 0) << r.name;
  }
  const int64_t layers = m.config.num_hidden_layers;
  EXPECT_EQ(calls["attention.prefill"], layers);
  EXPECT_EQ(calls["attention.decode"], layers);
  // Per forward and layer: two norms, q/k/v as one group, gate/up with SwiGLU as one op, the two
  // residual adds inside o and down (linear_add); then the final norm and the LM head.
  EXPECT_EQ(calls["rmsnorm"], 2 * (2 * layers + 1));
  EXPECT_EQ(calls["add"], 0);
  EXPECT_EQ(calls["linear.bf16.group"], 2 * layers);
  EXPECT_EQ(calls["linear.bf16.swiglu"], 2 * layers);
  EXPECT_EQ(calls["linear.bf16.add"], 2 * 2 * layers);
  EXPECT_EQ(calls["rope_kv_store"], 2 * layers);
  EXPECT_EQ(calls["linear.bf16"], 2 * 1);
  test::TempDir dir;
  const auto path = dir.path() / "trace.json";
  p.write_chrome_trace(path);
  std::ifstream in(path);
  const nlohmann::json trace = nlohmann::json::parse(in);
  int64_t ops = 0, regions = 0;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "X") continue;
    EXPECT_GE(e["dur"].get<double>(), 0);
    (e["cat"] == "op" ? ops : regions) += 1;
  }
  EXPECT_EQ(regions, 2);
  EXPECT_GE(ops, 2 * (8 * layers + 3));  // per forward: 8 ops per layer, embedding, norm, head
}

}  // namespace
}  // namespace llamaq
