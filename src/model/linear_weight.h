// The weight of one projection y = x W^T, as the backends consume it: a dense matrix, or an NF4
// matrix that kernels dequantize on the fly (never a full dense copy).
#pragma once

#include <memory>

#include "core/tensor.h"
#include "quant/nf4.h"

namespace llamaq {

// A LoRA branch riding on a projection: y += scale * (x A^T) B^T (specs §6.4).
struct LoraWeights {
  Tensor a;         // [r, in] f32
  Tensor b_scaled;  // [out, r] f32: B already multiplied by the scale (inference)
  Tensor b;         // [out, r] f32: B as stored in the adapter
  float scale = 1;  // alpha / r (or alpha / sqrt(r) with rsLoRA)
  int64_t rank() const { return a.dim(0); }
};

struct LinearWeight {
  Tensor weight;                              // dense [out, in] bf16 | f16 | f32; empty if NF4
  std::shared_ptr<const nf4::Nf4Weight> nf4;  // set when the weight is 4-bit
  std::shared_ptr<const LoraWeights> lora;    // optional adapter on top of either
  // NF4 on the CPU: the block scales decoded once when the backend takes the weight (optional).
  std::shared_ptr<const nf4::HalfScales> half_scales;

  static LinearWeight dense(Tensor w) {
    LinearWeight out;
    out.weight = std::move(w);
    return out;
  }
  static LinearWeight quantized(std::shared_ptr<const nf4::Nf4Weight> w) {
    LinearWeight out;
    out.nf4 = std::move(w);
    return out;
  }

  bool quantized() const { return nf4 != nullptr; }
  int64_t out_features() const { return nf4 ? nf4->rows : weight.dim(0); }
  int64_t in_features() const { return nf4 ? nf4->cols : weight.dim(1); }
  // Bytes the weight occupies (packed data and scales for NF4).
  int64_t nbytes() const;
};

}  // namespace llamaq
