// The weight of one projection y = x W^T, as the backends consume it.
#pragma once

#include "core/tensor.h"

namespace llamaq {

struct LinearWeight {
  Tensor weight;  // [out_features, in_features] bf16 | f16 | f32
  int64_t out_features() const { return weight.dim(0); }
  int64_t in_features() const { return weight.dim(1); }
};

}  // namespace llamaq
