// Typed Llama 3 weights, bound by name from a checkpoint with a shape and dtype check each
// (specs §4.2). Host tensors over the memory-mapped files; a backend uploads them as it needs.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/linear_weight.h"

namespace llamaq {

struct LayerWeights {
  Tensor input_norm;  // [hidden]
  LinearWeight q_proj;  // [H*D, hidden]
  LinearWeight k_proj;  // [Hkv*D, hidden]
  LinearWeight v_proj;  // [Hkv*D, hidden]
  LinearWeight o_proj;  // [hidden, H*D]
  Tensor post_attention_norm;  // [hidden]
  LinearWeight gate_proj;  // [intermediate, hidden]
  LinearWeight up_proj;    // [intermediate, hidden]
  LinearWeight down_proj;  // [hidden, intermediate]
};

struct LlamaWeights {
  Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;     // [hidden]
  LinearWeight lm_head;  // [vocab, hidden]; the embedding table itself when tied
};

// Binds every tensor the config calls for. A missing, misshapen or wrongly typed tensor, and
// any tensor the model does not use, is an error naming the tensor and its file.
LlamaWeights bind_llama_weights(const LlamaConfig& config, const CheckpointTensors& checkpoint);

// Replaces every tensor of `weights` (dense, NF4 and norms; not LoRA adapters) by a copy in memory
// the process owns, so that nothing points into a checkpoint mapping any more (`--no-mmap`). A
// tied LM head keeps sharing the embedding's copy. Returns the bytes copied.
int64_t copy_weights_into_memory(LlamaWeights& weights);

}  // namespace llamaq
