// The CUDA training ops against the CPU reference (itself checked by finite differences in
// tests/unit/backward_ops_test.cpp) on odd sizes: 1, 7, 97 and 300 tokens, head dims 64 and 128,
// GQA. Bounds:
// - fp32 ops that round each step as the CPU does or differ only in the order of a sum (RMSNorm,
//   RoPE, SwiGLU backward, scale, multiply, cross-entropy, AdamW): 1e-6 relative, tens of times
//   above the fp32 noise of a reordered sum.
// - attention backward: fp32, but the probabilities come from exp(s - lse) with a float
//   log-sum-exp instead of exp(s - max) / sum, and dQ is summed by atomics in any order; each
//   term carries a few ulps, so 2e-5 relative (the naive path: the CPU's softmax, cuBLAS sums in
//   another order: the same bound). With one token (n = 1) the exact dQ and dK are
//   zero (one key: P = 1, and dS = P (dP - delta) with delta = P dP), and both backends compute
//   dP and delta from the same dot product, so they must give exactly zero: a zero reference
//   admits only a zero result (a relative error would divide by zero).
// - f32 GEMMs (matmul_tn/nn, f32-weight linear backward): cuBLAS without TF32, sums over at most
//   300 terms in another order: 1e-5.
// - bf16 and NF4 weights: dy is rounded to bf16 (2^-9 relative per element) for the tensor-core
//   GEMM, the bound of the forward linear tests: 1e-2.
// Every comparison prints the measured error and the sizes, and records it as a test property.
#include <algorithm>
#include <cmath>

#include "backend/cuda/ops.h"
#include "core/thread_pool.h"
#include "gpu_test_support.h"
#include "quant/nf4_codec.h"

namespace llamaq {
namespace {

using gpu_test::host_values;
using gpu_test::relative_error;

constexpr double kFp32OpTolerance = 1e-6;
constexpr double kAttentionTolerance = 2e-5;
// The tensor-core backward rounds Q, K, V, dO, P and dS to bf16 (2^-9 relative each) and
// accumulates in fp32; dS = P (dP - delta) subtracts nearly equal terms, which raises the
// relative error of its small entries. Measured on the H200 (2026-11-29) over these cases: at most
// 3.5e-3 (dK, dQ) and 2.3e-3 (dV); the bound leaves a factor of about 3.
constexpr double kBf16AttentionBackwardTolerance = 1e-2;
constexpr double kFp32GemmTolerance = 1e-5;
constexpr double kBf16OperandTolerance = 1e-2;
const int64_t kTokenCounts[] = {1, 7, 97, 300};

// An f64 tensor on the host or the device as doubles (host_values covers the 32-bit types).
std::vector<double> f64_values(Backend& gpu, const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (t.device() == Device::Cuda) {
    gpu.copy_to_host(t, out.data());
  } else {
    std::copy_n(t.data_as<const double>(), t.numel(), out.data());
  }
  return out;
}

class CudaBackward : public gpu_test::GpuTest {
 protected:
  std::mt19937 rng{4321};
  ThreadPool pool_{2};

  Tensor random(Shape shape, float scale = 1.0f) {
    return gpu_test::random_tensor(DType::F32, std::move(shape), rng, scale);
  }
  // Checks got (device) against want (host) and reports the error with `what`.
  // A reference of all zeros admits only zeros (error 0, else infinity).
  void expect_close(const Tensor& got, const Tensor& want, double bound, const std::string& what) {
    const std::vector<double> a = host_values(gpu(), got), b = host_values(gpu(), want);
    const bool zero_reference = std::all_of(b.begin(), b.end(), [](double x) { return x == 0; });
    const bool zero_result = std::all_of(a.begin(), a.end(), [](double x) { return x == 0; });
    const double error = !zero_reference ? relative_error(a, b) : zero_result ? 0.0 : INFINITY;
    EXPECT_LE(error, bound) << what << ": relative error " << error << " > bound " << bound
                            << (zero_reference ? " (the reference is all zeros)" : "") << "; "
                            << gpu_test::worst_element(a, b);
    std::string key = what;
    for (char& c : key) {
      if (c == ' ' || c == '=' || c == ',') c = '_';
    }
    RecordProperty(key, std::to_string(error));
  }
};

TEST_F(CudaBackward, RmsnormBackwardMatchesTheCpu) {
  for (DType dtype : {DType::BF16, DType::F32}) {
    for (int64_t d : {97, 4096}) {
      const Tensor weight = gpu_test::random_tensor(dtype, {d}, rng);
      for (int64_t n : kTokenCounts) {
        const Tensor x = random({n, d}, 3.0f), dy = random({n, d});
        Tensor want = cpu().alloc(DType::F32, {n, d});
        cpu().rmsnorm_backward(x, weight, 1e-5f, dy, want);
        Tensor got = gpu_test::poisoned(gpu(), {n, d});
        gpu().rmsnorm_backward(gpu().upload(x), gpu().upload(weight), 1e-5f, gpu().upload(dy), got);
        expect_close(got, want, kFp32OpTolerance,
                     fmt::format("rmsnorm_backward {} d={} n={}", dtype_name(dtype), d, n));
      }
    }
  }
}

TEST_F(CudaBackward, RopeBackwardMatchesTheCpu) {
  for (int64_t head_dim : {64, 128}) {
    std::vector<float> freq(static_cast<size_t>(head_dim / 2));
    for (size_t j = 0; j < freq.size(); ++j)
      freq[j] = std::pow(500000.0f, -2.0f * float(j) / float(head_dim));
    Tensor inv_freq = cpu().alloc(DType::F32, {head_dim / 2});
    std::copy(freq.begin(), freq.end(), inv_freq.data_as<float>());
    for (int64_t n : kTokenCounts) {
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        pos[size_t(i)] = int32_t(3 * i + 5);
      const Tensor positions = gpu_test::int_tensor(pos);
      Tensor want = random({n, 3, head_dim});
      Tensor got = gpu().upload(want);
      cpu().rope_backward(want, positions, inv_freq);
      gpu().rope_backward(got, gpu().upload(positions), gpu().upload(inv_freq));
      expect_close(got, want, kFp32OpTolerance,
                   fmt::format("rope_backward D={} n={}", head_dim, n));
    }
  }
}

// Forward output of causal self-attention over the sequence's own keys (the `out` FA-2 takes).
Tensor attention_output(Backend& cpu, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t n = q.dim(0);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    pos[size_t(i)] = int32_t(i);
  const Tensor positions = gpu_test::int_tensor(pos);
  const KvLayerView kv{k.reshaped({n, 1, k.dim(1), k.dim(2)}),
                       v.reshaped({n, 1, v.dim(1), v.dim(2)}), positions, 1};
  Tensor out = cpu.alloc(DType::F32, {n, q.dim(1) * q.dim(2)});
  cpu.attention(q, positions, kv, out);
  return out;
}

// The flash backward (the backend's default) and the naive one (`--attn naive`: materialized
// probabilities, cuBLAS fp32 GEMMs; the same arithmetic for P and delta as the CPU, sums in
// another order, so the same bound).
TEST_F(CudaBackward, AttentionBackwardMatchesTheCpu) {
  struct Heads {
    int64_t h, kv;
  };
  for (int64_t head_dim : {64, 128}) {
    for (const Heads heads : {Heads{4, 4}, Heads{8, 2}, Heads{6, 1}}) {
      for (int64_t n : kTokenCounts) {
        const Tensor q = random({n, heads.h, head_dim}), k = random({n, heads.kv, head_dim});
        const Tensor v = random({n, heads.kv, head_dim});
        const Tensor d_out = random({n, heads.h * head_dim});
        const Tensor out = attention_output(cpu(), q, k, v);
        Tensor dq = cpu().alloc(DType::F32, q.shape()), dk = cpu().alloc(DType::F32, k.shape()),
               dv = cpu().alloc(DType::F32, v.shape());
        cpu().attention_backward(q, k, v, out, d_out, dq, dk, dv);
        const Tensor q_gpu = gpu().upload(q), k_gpu = gpu().upload(k), v_gpu = gpu().upload(v);
        const Tensor d_out_gpu = gpu().upload(d_out);
        enum class Kernel { Fp32, TensorCores, Naive };
        for (const Kernel kernel : {Kernel::Fp32, Kernel::TensorCores, Kernel::Naive}) {
          Tensor gdq = gpu_test::poisoned(gpu(), q.shape()),
                 gdk = gpu_test::poisoned(gpu(), k.shape()),
                 gdv = gpu_test::poisoned(gpu(), v.shape());
          double bound = kAttentionTolerance;
          if (kernel == Kernel::Naive) {
            cuda::attention_backward_naive(gpu().context(), q_gpu, k_gpu, v_gpu, d_out_gpu, gdq,
                                           gdk, gdv);
          } else if (kernel == Kernel::TensorCores) {
            // The backend's path for these head dims (bf16 operands).
            gpu().attention_backward(q_gpu, k_gpu, v_gpu, gpu().upload(out), d_out_gpu, gdq, gdk,
                                     gdv);
            bound = kBf16AttentionBackwardTolerance;
          } else {
            cuda::attention_backward(gpu().context(), q_gpu, k_gpu, v_gpu, gpu().upload(out),
                                     d_out_gpu, gdq, gdk, gdv);
          }
          const char* names[] = {"fp32", "tensor cores", "naive"};
          const std::string what = fmt::format("{} D={} H={} Hkv={} n={}", names[int(kernel)],
                                               head_dim, heads.h, heads.kv, n);
          expect_close(gdq, dq, bound, "attention_backward dq " + what);
          expect_close(gdk, dk, bound, "attention_backward dk " + what);
          expect_close(gdv, dv, bound, "attention_backward dv " + what);
        }
      }
    }
  }
}

TEST_F(CudaBackward, SwigluBackwardMatchesTheCpu) {
  for (int64_t n : kTokenCounts) {
    const Tensor g = random({n, 353}, 4.0f), u = random({n, 353}), ds = random({n, 353});
    Tensor dg = cpu().alloc(DType::F32, g.shape()), du = cpu().alloc(DType::F32, g.shape());
    cpu().swiglu_backward(g, u, ds, dg, du);
    Tensor gdg = gpu_test::poisoned(gpu(), g.shape()), gdu = gpu_test::poisoned(gpu(), g.shape());
    gpu().swiglu_backward(gpu().upload(g), gpu().upload(u), gpu().upload(ds), gdg, gdu);
    expect_close(gdg, dg, kFp32OpTolerance, fmt::format("swiglu_backward d_gate n={}", n));
    expect_close(gdu, du, kFp32OpTolerance, fmt::format("swiglu_backward d_up n={}", n));
  }
}

TEST_F(CudaBackward, LinearBackwardInputMatchesTheCpu) {
  struct Case {
    std::string name;
    LinearWeight w;
    double bound;
  };
  std::vector<Case> cases;
  for (DType dtype : {DType::BF16, DType::F32}) {
    LinearWeight w;
    w.weight = gpu_test::random_tensor(dtype, {193, 320}, rng, 0.1f);
    cases.push_back({std::string(dtype_name(dtype)), w,
                     dtype == DType::F32 ? kFp32GemmTolerance : kBf16OperandTolerance});
  }
  for (bool double_quant : {false, true}) {
    const Tensor dense = gpu_test::random_tensor(DType::BF16, {193, 320}, rng, 0.1f);
    LinearWeight w;
    w.nf4 = std::make_shared<nf4::Nf4Weight>(nf4::quantize(dense, double_quant, pool_, 64));
    cases.push_back({double_quant ? "nf4-dq" : "nf4", w, kBf16OperandTolerance});
  }
  for (const Case& c : cases) {
    const LinearWeight device = gpu().upload_linear(c.w);
    for (int64_t n : kTokenCounts) {
      const Tensor dy = random({n, 193});
      Tensor want = cpu().alloc(DType::F32, {n, 320});
      cpu().linear_backward_input(dy, c.w, want, false);
      Tensor got = gpu_test::poisoned(gpu(), {n, 320});
      gpu().linear_backward_input(gpu().upload(dy), device, got, false);
      expect_close(got, want, c.bound, fmt::format("linear_backward_input {} n={}", c.name, n));
      // Accumulating onto a second gradient (the projections that share an input).
      const Tensor other = random({n, 320});
      Tensor want_sum = Tensor::zeros(DType::F32, other.shape()), got_sum = gpu().upload(other);
      std::copy_n(other.data_as<const float>(), other.numel(), want_sum.data_as<float>());
      cpu().linear_backward_input(dy, c.w, want_sum, true);
      gpu().linear_backward_input(gpu().upload(dy), device, got_sum, true);
      expect_close(got_sum, want_sum, c.bound,
                   fmt::format("linear_backward_input accumulate {} n={}", c.name, n));
    }
  }
}

// The LoRA products (gradients, the up-projection added into the base output), overwriting and
// accumulating with a scale.
TEST_F(CudaBackward, LoraGemmsMatchTheCpu) {
  for (int64_t n : kTokenCounts) {
    for (const GemmUpdate u : {GemmUpdate{1.0f, false}, GemmUpdate{0.5f, true}}) {
      const std::string how = fmt::format("alpha={} accumulate={} n={}", u.alpha, u.accumulate, n);
      auto check = [&](const char* name, const Tensor& a, const Tensor& b, Shape c_shape,
                       auto&& cpu_op, auto&& gpu_op) {
        Tensor want = random(c_shape);
        Tensor got = u.accumulate ? gpu().upload(want) : gpu_test::poisoned(gpu(), c_shape);
        cpu_op(a, b, want);
        gpu_op(gpu().upload(a), gpu().upload(b), got);
        expect_close(got, want, kFp32GemmTolerance, fmt::format("{} {}", name, how));
      };
      check(
          "matmul_tn", random({n, 17}), random({n, 97}), {17, 97},
          [&](auto& a, auto& b, auto& c) { cpu().matmul_tn(a, b, c, u); },
          [&](auto a, auto b, auto& c) { gpu().matmul_tn(a, b, c, u); });
      check(
          "matmul_nn", random({n, 17}), random({17, 97}), {n, 97},
          [&](auto& a, auto& b, auto& c) { cpu().matmul_nn(a, b, c, u); },
          [&](auto a, auto b, auto& c) { gpu().matmul_nn(a, b, c, u); });
      check(
          "matmul_nt", random({n, 97}), random({17, 97}), {n, 17},
          [&](auto& a, auto& b, auto& c) { cpu().matmul_nt(a, b, c, u); },
          [&](auto a, auto b, auto& c) { gpu().matmul_nt(a, b, c, u); });
    }
  }
}

TEST_F(CudaBackward, ScaleMultiplyZeroAndDropoutMaskMatchTheCpu) {
  const Tensor x = random({7, 333}), y = random({7, 333});
  Tensor want = cpu().alloc(DType::F32, x.shape());
  cpu().scale(x, 0.37f, want);
  Tensor got = gpu().upload(x);
  gpu().scale(got, 0.37f, got);  // in place, as the model uses it
  expect_close(got, want, kFp32OpTolerance, "scale");
  cpu().multiply(x, y, want);
  Tensor got2 = gpu_test::poisoned(gpu(), x.shape());
  gpu().multiply(gpu().upload(x), gpu().upload(y), got2);
  expect_close(got2, want, kFp32OpTolerance, "multiply");
  gpu().zero(got2);
  for (double v : host_values(gpu(), got2))
    ASSERT_EQ(v, 0.0) << "zero left a value";
  // The masks must be identical on every backend: same hash, same threshold.
  const uint64_t threshold = uint64_t(0.7 * 18446744073709551615.0);
  Tensor mask = cpu().alloc(DType::F32, {97, 129});
  cpu().dropout_mask(0x1234567890abcdefull, threshold, float(1 / 0.7), mask);
  Tensor gmask = gpu_test::poisoned(gpu(), {97, 129});
  gpu().dropout_mask(0x1234567890abcdefull, threshold, float(1 / 0.7), gmask);
  EXPECT_EQ(host_values(gpu(), gmask), host_values(gpu(), mask)) << "dropout masks differ";
}

TEST_F(CudaBackward, CrossEntropyMatchesTheCpu) {
  for (int64_t vocab : {97, 128256}) {
    for (int64_t rows : {1, 7, 97}) {
      const Tensor logits = random({rows, vocab}, 8.0f);
      std::vector<int32_t> targets(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        targets[size_t(r)] = r % 5 == 3 ? -100 : int32_t(rng() % uint32_t(vocab));
      }
      const Tensor host_targets = gpu_test::int_tensor(targets);
      Tensor want = cpu().alloc(DType::F32, logits.shape());
      std::copy_n(logits.data_as<const float>(), logits.numel(), want.data_as<float>());
      Tensor want_losses = cpu().alloc(DType::F64, {rows});
      cpu().cross_entropy(want, host_targets, 13.0, want_losses);
      Tensor got = gpu().upload(logits);
      Tensor got_losses = gpu().alloc(DType::F64, {rows});
      gpu().cross_entropy(got, gpu().upload(host_targets), 13.0, got_losses);
      const std::string what = fmt::format("vocab={} rows={}", vocab, rows);
      expect_close(got, want, kFp32OpTolerance, "cross_entropy gradient " + what);
      const double loss_error =
          relative_error(f64_values(gpu(), got_losses), f64_values(gpu(), want_losses));
      EXPECT_LE(loss_error, kFp32OpTolerance)
          << "cross_entropy losses " << what << ": relative error " << loss_error;
    }
  }
}

TEST_F(CudaBackward, AdamWAndGradientNormMatchTheCpu) {
  const Tensor p0 = random({16, 333}), g0 = random({16, 333}, 1e-3f);
  Tensor p = cpu().alloc(DType::F32, p0.shape());
  std::copy_n(p0.data_as<const float>(), p0.numel(), p.data_as<float>());
  Tensor m = cpu().alloc(DType::F32, p0.shape()), v = cpu().alloc(DType::F32, p0.shape());
  Tensor gp = gpu().upload(p0), gg = gpu().upload(g0);
  Tensor gm = gpu().alloc(DType::F32, p0.shape()), gv = gpu().alloc(DType::F32, p0.shape());
  for (int step = 1; step <= 3; ++step) {
    AdamWUpdate u;
    u.step_size = float(1e-2 / (1 - std::pow(0.9, step)));
    u.bias_correction2_sqrt = std::sqrt(1 - std::pow(0.999, step));
    u.decay = float(1 - 1e-2 * 0.01);
    cpu().adamw_step(p, g0, m, v, u);
    gpu().adamw_step(gp, gg, gm, gv, u);
  }
  expect_close(gp, p, kFp32OpTolerance, "adamw params after 3 steps");
  expect_close(gm, m, kFp32OpTolerance, "adamw exp_avg after 3 steps");
  expect_close(gv, v, kFp32OpTolerance, "adamw exp_avg_sq after 3 steps");
  const std::vector<Tensor> host{p0, g0};
  const std::vector<Tensor> device{gpu().upload(p0), gg};
  const double want = cpu().sum_of_squares(host), got = gpu().sum_of_squares(device);
  EXPECT_NEAR(got, want, want * 1e-12) << "sum of squares (double sums in another order)";
}

}  // namespace
}  // namespace llamaq
