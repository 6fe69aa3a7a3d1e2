// The QLoRA training model, written once against the backend op interface (CPU reference or
// CUDA): a frozen base (bf16 or NF4) with trainable fp32 LoRA adapters, forward with per-layer
// activation checkpointing (only each layer's input is kept; the layer is recomputed inside
// backward), backward to the LoRA parameters only, and a cross-entropy over the vocabulary
// computed in chunks of rows so the full logits matrix never exists.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/peft_adapter.h"
#include "model/config.h"
#include "model/weights.h"

namespace llamaq {

// One trainable adapter: y += scale * (x A^T) B^T on the projection `module`. The tensors live on
// the model's backend (host memory on the CPU).
struct LoraParam {
  std::string module;  // "model.layers.0.self_attn.q_proj"
  Tensor a;            // [r, in] f32
  Tensor b;            // [out, r] f32
  Tensor grad_a;       // [r, in] f32
  Tensor grad_b;       // [out, r] f32
  float scale = 1;
};

inline constexpr int32_t kIgnoreLabel = -100;

class LoraTrainModel {
 public:
  // On the CPU reference backend with `threads` threads (<= 0: all).
  LoraTrainModel(LlamaConfig config, LlamaWeights base, int threads);
  // On `backend`, which must outlive the model; the base weights are uploaded to it.
  LoraTrainModel(LlamaConfig config, const LlamaWeights& base, Backend& backend);
  ~LoraTrainModel();

  // Fresh adapters as PEFT initialises them: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (seeded).
  void init_lora(const LoraConfig& config, uint64_t seed);
  // Adapters from a saved PEFT adapter (to continue training or to test against references).
  void load_lora(const PeftAdapter& adapter);
  std::vector<LoraParam>& params() { return params_; }
  const LoraConfig& lora_config() const { return lora_config_; }
  // Host copies of the adapters (for save_peft_adapter).
  std::map<std::string, LoraTensors> lora_tensors() const;

  // Forward and backward of one sequence (positions 0..n-1). Labels are unshifted as in
  // transformers: position t predicts labels[t + 1]; kIgnoreLabel targets are skipped. Adds
  // d(loss)/d(param) to the gradients for loss = sum(CE) / normalizer and returns sum(CE).
  double accumulate_gradients(std::span<const int32_t> ids, std::span<const int32_t> labels,
                              double normalizer);
  // Sum of CE over the sequence's targets, no gradients (eval loss).
  double loss_sum(std::span<const int32_t> ids, std::span<const int32_t> labels);
  void zero_grad();
  // The key of the next training pass's LoRA dropout masks (lora_dropout of the config; masks
  // are a pure function of the key, so runs and resumes are reproducible on every backend).
  void set_dropout_key(uint64_t key) { dropout_key_ = key; }

  // Logits [n, vocab] of one sequence with the adapters (tests).
  std::vector<float> logits(std::span<const int32_t> ids);

  const LlamaConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  struct Cache;  // one layer's recomputed activations (defined in lora_model.cpp)

 private:
  struct Layer;
  void init_layers();  // the per-layer slots (no adapters yet) and the RoPE frequencies
  void add_param(size_t layer, int projection, std::string module, const Tensor& host_a,
                 const Tensor& host_b, float scale);
  double head(const Tensor& x, std::span<const int32_t> labels, double normalizer, Tensor* dx,
              std::vector<float>* logits_out);
  double run(std::span<const int32_t> ids, std::span<const int32_t> labels, double normalizer,
             bool backward, std::vector<float>* logits_out);

  std::unique_ptr<Backend> owned_backend_;  // the CPU backend of the threads constructor
  Backend& backend_;
  LlamaConfig config_;
  LlamaWeights base_;  // on the backend
  LoraConfig lora_config_;
  std::vector<LoraParam> params_;
  std::vector<Layer> layers_;  // the projections of each layer with their adapters
  Tensor inv_freq_;            // [head_dim / 2] f32 on the backend
  uint64_t dropout_key_ = 0;
};

}  // namespace llamaq
