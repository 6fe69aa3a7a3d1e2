// Every CPU backward op against central finite differences of its forward op, on odd sizes:
// L = sum(r * forward(x)) for a fixed random r, dL/dx numerically vs the backward op.
#include <functional>
#include <random>

#include "backend/cpu/backward.h"
#include "backend/cpu/cpu_ops.h"
#include "quant/nf4_codec.h"
#include "test_util.h"

namespace llamaq {
namespace {

Tensor random(Shape shape, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::zeros(DType::F32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data_as<float>()[i] = u(rng);
  return t;
}

double weighted_sum(const Tensor& y, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i)
    s += double(y.data_as<const float>()[i]) * r.data_as<const float>()[i];
  return s;
}

// Compares `analytic` = dL/dx with central differences of L(x) at a spread of elements.
void expect_gradient(Tensor& x, const Tensor& analytic, const std::function<double()>& loss) {
  ASSERT_EQ(x.numel(), analytic.numel());
  for (int64_t i = 0; i < x.numel(); i += std::max<int64_t>(1, x.numel() / 23)) {
    float& v = x.data_as<float>()[i];
    const float saved = v;
    const float h = 1e-2f;
    v = saved + h;
    const double up = loss();
    v = saved - h;
    const double down = loss();
    v = saved;
    const double numeric = (up - down) / (2 * h);
    // fp32 forward values of order 1-10 differenced over 0.02, plus O(h^2) truncation.
    EXPECT_NEAR(analytic.data_as<const float>()[i], numeric, 3e-3 + 1e-2 * std::abs(numeric))
        << "element " << i;
  }
}

ThreadPool& pool() {
  static ThreadPool p(2);
  return p;
}

TEST(BackwardOps, RmsNorm) {
  const int64_t n = 7, d = 97;
  Tensor x = random({n, d}, 1), w = random({d}, 2), r = random({n, d}, 3);
  Tensor y = random({n, d}, 0), dx = random({n, d}, 0);
  cpu::rmsnorm_backward(pool(), x, w, 1e-5f, r, dx);
  expect_gradient(x, dx, [&] {
    cpu::rmsnorm(pool(), x, w, 1e-5f, y);
    return weighted_sum(y, r);
  });
}

TEST(BackwardOps, Rope) {
  const int64_t n = 7, heads = 3, dim = 16;
  Tensor x = random({n, heads, dim}, 1), r = random({n, heads, dim}, 2);
  Tensor positions = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i)
    positions.data_as<int32_t>()[i] = int32_t(3 * i + 1);
  Tensor inv_freq = random({dim / 2}, 4, 0.5f);
  Tensor grad = Tensor::zeros(DType::F32, r.shape());
  std::copy_n(r.data_as<float>(), r.numel(), grad.data_as<float>());
  cpu::rope_backward(pool(), grad, positions, inv_freq);
  expect_gradient(x, grad, [&] {
    Tensor y = Tensor::zeros(DType::F32, x.shape());
    std::copy_n(x.data_as<float>(), x.numel(), y.data_as<float>());
    cpu::rope(pool(), y, positions, inv_freq);
    return weighted_sum(y, r);
  });
}

TEST(BackwardOps, CausalGqaAttention) {
  const int64_t n = 9, heads = 4, kv_heads = 2, dim = 8;
  Tensor q = random({n, heads, dim}, 1), k = random({n, kv_heads, dim}, 2),
         v = random({n, kv_heads, dim}, 3);
  Tensor r = random({n, heads * dim}, 4);
  Tensor positions = Tensor::zeros(DType::I32, {n}), table = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i)
    positions.data_as<int32_t>()[i] = table.data_as<int32_t>()[i] = int32_t(i);
  auto loss = [&] {
    Tensor out = Tensor::zeros(DType::F32, {n, heads * dim});
    const KvLayerView kv{k.reshaped({n, 1, kv_heads, dim}), v.reshaped({n, 1, kv_heads, dim}),
                         table, 1};
    cpu::attention(pool(), q, positions, kv, out);
    return weighted_sum(out, r);
  };
  Tensor dq = random(q.shape(), 0), dk = random(k.shape(), 0), dv = random(v.shape(), 0);
  cpu::attention_backward(pool(), q, k, v, r, dq, dk, dv);
  expect_gradient(q, dq, loss);
  expect_gradient(k, dk, loss);
  expect_gradient(v, dv, loss);
}

TEST(BackwardOps, SwiGlu) {
  Tensor g = random({7, 33}, 1, 3.0f), u = random({7, 33}, 2), r = random({7, 33}, 3);
  Tensor dg = random(g.shape(), 0), du = random(u.shape(), 0), s = random(g.shape(), 0);
  cpu::swiglu_backward(pool(), g, u, r, dg, du);
  auto loss = [&] {
    cpu::swiglu(pool(), g, u, s);
    return weighted_sum(s, r);
  };
  expect_gradient(g, dg, loss);
  expect_gradient(u, du, loss);
}

TEST(BackwardOps, LinearInputGradientDenseAndNf4) {
  const int64_t n = 7, in = 65, out = 97;
  Tensor x = random({n, in}, 1), r = random({n, out}, 2), y = random({n, out}, 0);
  Tensor dense = random({out, in}, 3, 0.2f);
  ThreadPool& p = pool();
  for (const LinearWeight& w :
       {LinearWeight::dense(dense),
        LinearWeight::quantized(std::make_shared<nf4::Nf4Weight>(nf4::quantize(dense, true, p)))}) {
    Tensor dx = random({n, in}, 0);
    cpu::linear_backward_input(p, r, w, dx, /*accumulate=*/false);
    expect_gradient(x, dx, [&] {
      cpu::linear(p, x, w, y);
      return weighted_sum(y, r);
    });
    // With `accumulate` the same gradient lands on top of what dx held.
    Tensor sum = random({n, in}, 4);
    const Tensor before = random({n, in}, 4);  // the same values
    cpu::linear_backward_input(p, r, w, sum, /*accumulate=*/true);
    for (int64_t i = 0; i < sum.numel(); ++i) {
      // One f32 addition of values below ~10: a few ulps.
      EXPECT_NEAR(sum.data_as<float>()[i], before.data_as<float>()[i] + dx.data_as<float>()[i],
                  1e-5);
    }
  }
}

// The LoRA products against a double-precision sum, for every element, overwriting and
// accumulating with a scale.
TEST(BackwardOps, LoraMatmulsScaleAndAccumulate) {
  const int64_t n = 7, p = 5, q = 3;
  const Tensor a = random({n, p}, 1), b_tn = random({n, q}, 2), b_nn = random({p, q}, 3);
  const Tensor a_nt = random({n, p}, 4), b_nt = random({q, p}, 5);
  auto at = [](const Tensor& t, int64_t r, int64_t c) {
    return double(t.data_as<const float>()[r * t.dim(1) + c]);
  };
  for (const GemmUpdate update : {GemmUpdate{1.0f, false}, GemmUpdate{0.25f, true}}) {
    Tensor tn = random({p, q}, 6), nn = random({n, q}, 7), nt = random({n, q}, 8);
    const Tensor tn0 = random({p, q}, 6), nn0 = random({n, q}, 7), nt0 = random({n, q}, 8);
    cpu::matmul_tn(pool(), a, b_tn, tn, update);
    cpu::matmul_nn(pool(), a, b_nn, nn, update);
    cpu::matmul_nt(pool(), a_nt, b_nt, nt, update);
    auto expect = [&](const Tensor& got, const Tensor& old, int64_t r, int64_t c, double product) {
      const double want = update.alpha * product + (update.accumulate ? at(old, r, c) : 0.0);
      // Sums of at most 7 products of values below 1, in f32: a few ulps of ~5.
      EXPECT_NEAR(at(got, r, c), want, 1e-5) << "row " << r << " column " << c;
    };
    for (int64_t i = 0; i < p; ++i)
      for (int64_t j = 0; j < q; ++j) {
        double sum = 0;
        for (int64_t t = 0; t < n; ++t)
          sum += at(a, t, i) * at(b_tn, t, j);
        expect(tn, tn0, i, j, sum);
      }
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < q; ++j) {
        double sum_nn = 0, sum_nt = 0;
        for (int64_t i = 0; i < p; ++i) {
          sum_nn += at(a, t, i) * at(b_nn, i, j);
          sum_nt += at(a_nt, t, i) * at(b_nt, j, i);
        }
        expect(nn, nn0, t, j, sum_nn);
        expect(nt, nt0, t, j, sum_nt);
      }
  }
}

}  // namespace
}  // namespace llamaq
