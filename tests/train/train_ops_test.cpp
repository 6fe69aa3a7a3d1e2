// The CPU reference training ops beyond backward.h (backend/cpu/train_ops.h), through the CPU
// backend: the cross-entropy gradient against central finite differences, the dropout mask's
// keep rate and scale, the sum of squares and one AdamW update against torch's formula in double.
#include <cmath>
#include <random>

#include "backend/backend.h"
#include "test_util.h"

namespace llamaq {
namespace {

Tensor random(Shape shape, uint64_t seed, float scale) {
  Tensor t = Tensor::zeros(DType::F32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data_as<float>()[i] = u(rng);
  return t;
}

Tensor targets_of(const std::vector<int32_t>& values) {
  Tensor t = Tensor::zeros(DType::I32, {int64_t(values.size())});
  std::copy(values.begin(), values.end(), t.data_as<int32_t>());
  return t;
}

TEST(CpuTrainOps, CrossEntropyGradientMatchesFiniteDifferences) {
  const auto cpu = make_cpu_backend(2);
  const Tensor logits = random({5, 37}, 3, 4.0f);
  const Tensor targets = targets_of({3, -100, 36, 0, 17});  // row 1 ignored
  const double normalizer = 4.0;
  const auto loss = [&](const Tensor& x) {
    Tensor copy = Tensor::zeros(DType::F32, x.shape());
    std::copy_n(x.data_as<const float>(), x.numel(), copy.data_as<float>());
    Tensor losses = Tensor::zeros(DType::F64, {5});
    cpu->cross_entropy(copy, targets, normalizer, losses);
    double sum = 0;
    for (int64_t r = 0; r < 5; ++r)
      sum += losses.data_as<double>()[r];
    return sum / normalizer;
  };
  Tensor grad = Tensor::zeros(DType::F32, logits.shape());
  std::copy_n(logits.data_as<const float>(), logits.numel(), grad.data_as<float>());
  Tensor losses = Tensor::zeros(DType::F64, {5});
  cpu->cross_entropy(grad, targets, normalizer, losses);
  EXPECT_EQ(losses.data_as<double>()[1], 0.0) << "an ignored row has no loss";
  Tensor x = random({5, 37}, 3, 4.0f);  // the same values as `logits`, perturbed one at a time
  for (int64_t i = 0; i < x.numel(); i += 7) {
    float& v = x.data_as<float>()[i];
    const float saved = v, h = 1e-2f;
    v = saved + h;
    const double up = loss(x);
    v = saved - h;
    const double down = loss(x);
    v = saved;
    const double numeric = (up - down) / (2 * h);
    // Losses of ~4 in double from fp32 logits, differenced over 0.02: the O(h^2) truncation of
    // the softmax's curvature dominates (~1e-5).
    EXPECT_NEAR(grad.data_as<float>()[i], numeric, 1e-4) << "element " << i;
  }
}

TEST(CpuTrainOps, DropoutMaskKeepsTheRequestedShareScaled) {
  const auto cpu = make_cpu_backend(1);
  Tensor mask = Tensor::zeros(DType::F32, {200, 100});
  const double keep = 0.7;
  cpu->dropout_mask(99, uint64_t(keep * 18446744073709551615.0), float(1 / keep), mask);
  int64_t kept = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) {
    const float m = mask.data_as<float>()[i];
    ASSERT_TRUE(m == 0.0f || m == float(1 / keep)) << m;
    kept += m != 0.0f;
  }
  // 20000 Bernoulli(0.7) draws: standard deviation 65, so 5 sigma is 325.
  EXPECT_NEAR(double(kept), 14000.0, 325.0);
}

TEST(CpuTrainOps, SumOfSquaresAndAdamWFollowTorch) {
  const auto cpu = make_cpu_backend(1);
  Tensor p = random({3, 7}, 5, 1.0f);
  const Tensor g = random({3, 7}, 6, 0.1f);
  const std::vector<Tensor> both{p, g};
  double want = 0;
  for (const Tensor& t : both) {
    for (int64_t i = 0; i < t.numel(); ++i)
      want += double(t.data_as<float>()[i]) * t.data_as<float>()[i];
  }
  EXPECT_NEAR(cpu->sum_of_squares(both), want, want * 1e-15);
  const std::vector<float> p0(p.data_as<float>(), p.data_as<float>() + p.numel());
  Tensor m = Tensor::zeros(DType::F32, p.shape()), v = Tensor::zeros(DType::F32, p.shape());
  const double lr = 1e-2, wd = 0.1;
  AdamWUpdate u;
  u.step_size = float(lr / (1 - 0.9));
  u.bias_correction2_sqrt = std::sqrt(1 - 0.999);
  u.decay = float(1 - lr * wd);
  cpu->adamw_step(p, g, m, v, u);
  for (int64_t i = 0; i < p.numel(); ++i) {
    // torch, step 1: m = 0.1 g, v = 0.001 g^2, p = p (1 - lr wd) - lr m / 0.1 / (sqrt(v / 0.001) +
    // eps)
    const double gi = g.data_as<float>()[i];
    const double expect = p0[size_t(i)] * (1 - lr * wd) - lr * gi / (std::abs(gi) + 1e-8);
    // fp32 parameters of order 1: a few ulps.
    EXPECT_NEAR(p.data_as<float>()[i], expect, 1e-6) << "element " << i;
  }
}

}  // namespace
}  // namespace llamaq
