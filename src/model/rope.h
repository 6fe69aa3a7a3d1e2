// RoPE inverse frequencies as transformers computes them (specs §4.4), including the Llama 3.1
// "llama3" frequency scaling. Computed in fp32 like the reference.
#pragma once

#include <vector>

#include "model/config.h"

namespace llamaq {

std::vector<float> rope_inv_freq(const LlamaConfig& config);  // [head_dim / 2]

}  // namespace llamaq
