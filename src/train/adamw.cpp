#include "train/adamw.h"

#include <cmath>

#include "core/error.h"

namespace llamaq {

AdamW::AdamW(Backend& backend, std::vector<Tensor> params)
    : backend_(backend), params_(std::move(params)) {
  for (const Tensor& p : params_) {
    if (p.dtype() != DType::F32) fail("AdamW: parameters must be f32");
    if (p.device() != backend_.device())
      fail("AdamW: a parameter is not on the {} backend", backend_.name());
    moments_.push_back(backend_.alloc(DType::F32, p.shape()));
    moments_.push_back(backend_.alloc(DType::F32, p.shape()));
  }
}

AdamW::AdamW(std::vector<Tensor> params)
    : owned_backend_(make_cpu_backend(1)), backend_(*owned_backend_), params_(std::move(params)) {
  for (const Tensor& p : params_) {
    if (p.dtype() != DType::F32) fail("AdamW: parameters must be f32");
    moments_.push_back(backend_.alloc(DType::F32, p.shape()));
    moments_.push_back(backend_.alloc(DType::F32, p.shape()));
  }
}

AdamW::~AdamW() = default;

void AdamW::step(const std::vector<Tensor>& grads, double lr, const AdamWOptions& o) {
  if (grads.size() != params_.size()) {
    fail("AdamW: {} gradients for {} parameters", grads.size(), params_.size());
  }
  ++step_;
  // torch's _single_tensor_adamw: step_size = lr / bc1, denom = sqrt(v) / sqrt(bc2) + eps.
  AdamWUpdate u;
  u.step_size = float(lr / (1 - std::pow(o.beta1, double(step_))));
  u.bias_correction2_sqrt = std::sqrt(1 - std::pow(o.beta2, double(step_)));
  u.decay = float(1 - lr * o.weight_decay);
  u.beta1 = float(o.beta1);
  u.beta2 = float(o.beta2);
  u.eps = o.eps;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (grads[i].shape() != params_[i].shape())
      fail("AdamW: gradient {} does not fit its parameter", i);
    backend_.adamw_step(params_[i], grads[i], moments_[2 * i], moments_[2 * i + 1], u);
  }
}

double clip_grad_norm(Backend& backend, const std::vector<Tensor>& grads, double max_norm) {
  const double norm = std::sqrt(backend.sum_of_squares(grads));
  if (max_norm > 0 && norm > max_norm) {
    const float scale = float(max_norm / (norm + 1e-6));  // torch adds 1e-6 to the norm
    for (const Tensor& g : grads) {
      Tensor x = g;
      backend.scale(x, scale, x);
    }
  }
  return norm;
}

}  // namespace llamaq
