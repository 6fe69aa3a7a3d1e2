#include "train/adamw.h"

#include <cmath>

#include "core/error.h"

namespace llamaq {

AdamW::AdamW(std::vector<Tensor> params) : params_(std::move(params)) {
  for (const Tensor& p : params_) {
    if (p.dtype() != DType::F32) fail("AdamW: parameters must be f32");
    moments_.push_back(Tensor::zeros(DType::F32, p.shape()));
    moments_.push_back(Tensor::zeros(DType::F32, p.shape()));
  }
}

void AdamW::step(const std::vector<Tensor>& grads, double lr, const AdamWOptions& o) {
  if (grads.size() != params_.size()) fail("AdamW: {} gradients for {} parameters", grads.size(), params_.size());
  ++step_;
  // torch's _single_tensor_adamw: step_size = lr / bc1, denom = sqrt(v) / sqrt(bc2) + eps.
  const double bias_correction1 = 1 - std::pow(o.beta1, double(step_));
  const double bias_correction2_sqrt = std::sqrt(1 - std::pow(o.beta2, double(step_)));
  const float step_size = float(lr / bias_correction1);
  const float decay = float(1 - lr * o.weight_decay);
  const float b1 = float(o.beta1), b2 = float(o.beta2);
  for (size_t i = 0; i < params_.size(); ++i) {
    float* p = params_[i].data_as<float>();
    const float* g = grads[i].data_as<const float>();
    float* m = moments_[2 * i].data_as<float>();
    float* v = moments_[2 * i + 1].data_as<float>();
    for (int64_t j = 0; j < params_[i].numel(); ++j) {
      p[j] *= decay;
      m[j] = b1 * m[j] + (1 - b1) * g[j];
      v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
      const float denom = float(std::sqrt(double(v[j])) / bias_correction2_sqrt + o.eps);
      p[j] -= step_size * m[j] / denom;
    }
  }
}

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  double sum = 0;
  for (const Tensor& g : grads) {
    const float* x = g.data_as<const float>();
    for (int64_t i = 0; i < g.numel(); ++i) sum += double(x[i]) * x[i];
  }
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));  // torch adds 1e-6 to the norm
    for (const Tensor& g : grads) {
      float* x = g.data_as<float>();
      for (int64_t i = 0; i < g.numel(); ++i) x[i] *= scale;
    }
  }
  return norm;
}

}  // namespace llamaq
