// The weight of one projection y = x W^T, as the backends consume it: a dense matrix, or an NF4
// matrix that kernels dequantize on the fly (never a full dense copy).
#pragma once

#include <memory>

#include "core/tensor.h"
#include "quant/nf4.h"

namespace llamaq {

struct LinearWeight {
  Tensor weight;                              // dense [out, in] bf16 | f16 | f32; empty if NF4
  std::shared_ptr<const nf4::Nf4Weight> nf4;  // set when the weight is 4-bit

  bool quantized() const { return nf4 != nullptr; }
  int64_t out_features() const { return nf4 ? nf4->rows : weight.dim(0); }
  int64_t in_features() const { return nf4 ? nf4->cols : weight.dim(1); }
  // Bytes the weight occupies (packed data and scales for NF4).
  int64_t nbytes() const;
};

}  // namespace llamaq
