// AdamW with decoupled weight decay, exactly torch.optim.AdamW's update (fp32 moments), for the
// LoRA parameters only, on the parameters' backend (moments live next to them, on the GPU when
// training there); with global gradient-norm clipping as the transformers Trainer does.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.h"

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
  // params[i] are f32 tensors on `backend` (which must outlive the optimizer), kept by the caller.
  AdamW(Backend& backend, std::vector<Tensor> params);
  // Host parameters, updated by the CPU reference backend.
  explicit AdamW(std::vector<Tensor> params);
  ~AdamW();
  // One step at learning rate `lr` (the schedule's value): p -= lr * wd * p, then the Adam update.
  // grads[i] has the shape of params[i], on the same backend.
  void step(const std::vector<Tensor>& grads, double lr, const AdamWOptions& options);
  int64_t steps() const { return step_; }
  // Moments on the backend, for checkpoints: m then v of each parameter.
  std::vector<Tensor>& moments() { return moments_; }
  void set_steps(int64_t steps) { step_ = steps; }

 private:
  std::unique_ptr<Backend> owned_backend_;
  Backend& backend_;
  std::vector<Tensor> params_;
  std::vector<Tensor> moments_;  // 2 per parameter: exp_avg, exp_avg_sq
  int64_t step_ = 0;
};

// The global L2 norm of all gradients (on `backend`); when it exceeds max_norm > 0, scales them to
// max_norm (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
double clip_grad_norm(Backend& backend, const std::vector<Tensor>& grads, double max_norm);

}  // namespace llamaq
