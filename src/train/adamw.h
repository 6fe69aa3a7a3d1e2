// AdamW with decoupled weight decay, exactly torch.optim.AdamW's update (fp32 moments), for the
// LoRA parameters only; with global gradient-norm clipping as the transformers Trainer does.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace llamaq {

struct AdamWOptions {
  double lr = 2e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  // params[i] and grads[i] are f32 tensors of the same shape, kept by the caller.
  explicit AdamW(std::vector<Tensor> params);
  // One step at learning rate `lr` (the schedule's value): p -= lr * wd * p, then the Adam update.
  void step(const std::vector<Tensor>& grads, double lr, const AdamWOptions& options);
  int64_t steps() const { return step_; }
  // Moments, for checkpoints: m then v of each parameter.
  std::vector<Tensor>& moments() { return moments_; }
  void set_steps(int64_t steps) { step_ = steps; }

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> moments_;  // 2 per parameter: exp_avg, exp_avg_sq
  int64_t step_ = 0;
};

// The global L2 norm of all gradients; when it exceeds max_norm > 0, scales them to max_norm
// (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);

}  // namespace llamaq
