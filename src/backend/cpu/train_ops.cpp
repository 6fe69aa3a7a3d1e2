#include "backend/cpu/train_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/mix64.h"

namespace llamaq::cpu {
namespace {

double log_sum_exp(const float* row, int64_t n) {
  const float max = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i)
    sum += std::exp(double(row[i]) - max);
  return double(max) + std::log(sum);
}

}  // namespace

void scale(const Tensor& x, float s, Tensor& out) {
  const float* a = x.data_as<const float>();
  float* o = out.data_as<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    o[i] = a[i] * s;
}

void multiply(const Tensor& x, const Tensor& y, Tensor& out) {
  const float* a = x.data_as<const float>();
  const float* b = y.data_as<const float>();
  float* o = out.data_as<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    o[i] = a[i] * b[i];
}

void zero(Tensor& x) {
  if (x.nbytes() > 0) std::memset(x.data(), 0, size_t(x.nbytes()));
}

void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale, Tensor& mask) {
  float* m = mask.data_as<float>();
  for (int64_t i = 0; i < mask.numel(); ++i) {
    m[i] = mix64(base + uint64_t(i)) < threshold ? keep_scale : 0.0f;
  }
}

// Per row: loss = logsumexp(row) - row[target]; grad = (softmax(row) - onehot) / normalizer.
void cross_entropy(ThreadPool& pool, Tensor& logits, const Tensor& targets, double normalizer,
                   Tensor& losses) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  float* lg = logits.data_as<float>();
  const int32_t* tg = targets.data_as<const int32_t>();
  double* ls = losses.data_as<double>();
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = lg + i * vocab;
      const int32_t target = tg[i];
      if (target < 0 || target >= vocab) {  // kIgnoreLabel (the caller checks the others)
        std::fill_n(row, vocab, 0.0f);
        ls[i] = 0;
        continue;
      }
      const double lse = log_sum_exp(row, vocab);
      ls[i] = lse - double(row[target]);
      for (int64_t j = 0; j < vocab; ++j)
        row[j] = float(std::exp(double(row[j]) - lse) / normalizer);
      row[target] -= float(1.0 / normalizer);
    }
  });
}

double sum_of_squares(std::span<const Tensor> xs) {
  double sum = 0;
  for (const Tensor& g : xs) {
    const float* x = g.data_as<const float>();
    for (int64_t i = 0; i < g.numel(); ++i)
      sum += double(x[i]) * x[i];
  }
  return sum;
}

void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                const AdamWUpdate& u) {
  float* p = param.data_as<float>();
  const float* g = grad.data_as<const float>();
  float* m = exp_avg.data_as<float>();
  float* v = exp_avg_sq.data_as<float>();
  const float b1 = u.beta1, b2 = u.beta2;
  for (int64_t j = 0; j < param.numel(); ++j) {
    p[j] *= u.decay;
    m[j] = b1 * m[j] + (1 - b1) * g[j];
    v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
    const float denom = float(std::sqrt(double(v[j])) / u.bias_correction2_sqrt + u.eps);
    p[j] -= u.step_size * m[j] / denom;
  }
}

}  // namespace llamaq::cpu
