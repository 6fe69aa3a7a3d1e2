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
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = u(rng);
  return t;
}

double weighted_sum(const Tensor& y, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += double(y.data_as<const float>()[i]) * r.data_as<const float>()[i];
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
    EXPECT_NEAR(analytic.data_as<const float>()[i], numeric, 3e-3 + 1e-2 * std::abs(numeric)) << "element " << i;
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
  for (int64_t i = 0; i < n; ++i) positions.data_as<int32_t>()[i] = int32_t(3 * i + 1);
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
  Tensor q = random({n, heads, dim}, 1), k = random({n, kv_heads, dim}, 2), v = random({n, kv_heads, dim}, 3);
  Tensor r = random({n, heads * dim}, 4);
  Tensor positions = Tensor::zeros(DType::I32, {n}), table = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i) positions.data_as<int32_t>()[i] = table.data_as<int32_t>()[i] = int32_t(i);
  auto loss = [&] {
    Tensor out = Tensor::zeros(DType::F32, {n, heads * dim});
    const KvLayerView kv{k.reshaped({n, 1, kv_heads, dim}), v.reshaped({n, 1, kv_heads, dim}), table, 1};
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
    cpu::linear_backward_input(p, r, w, dx);
    expect_gradient(x, dx, [&] {
      cpu::linear(p, x, w, y);
      return weighted_sum(y, r);
    });
  }
}

TEST(BackwardOps, WeightGradientMatmuls) {
  Tensor a = random({7, 5}, 1), b = random({7, 3}, 2), c = random({5, 3}, 0);
  cpu::matmul_tn(pool(), a, b, c, false);
  double want = 0;
  for (int t = 0; t < 7; ++t) want += a.data_as<float>()[t * 5 + 4] * b.data_as<float>()[t * 3 + 2];
  EXPECT_NEAR(c.data_as<float>()[4 * 3 + 2], want, 1e-5);
  cpu::matmul_tn(pool(), a, b, c, true);  // accumulates
  EXPECT_NEAR(c.data_as<float>()[4 * 3 + 2], 2 * want, 2e-5);
  Tensor d = random({5, 3}, 3), e = random({7, 3}, 0);
  cpu::matmul_nn(pool(), a, d, e);
  double want2 = 0;
  for (int i = 0; i < 5; ++i) want2 += a.data_as<float>()[6 * 5 + i] * d.data_as<float>()[i * 3 + 1];
  EXPECT_NEAR(e.data_as<float>()[6 * 3 + 1], want2, 1e-5);
}

}  // namespace
}  // namespace llamaq
