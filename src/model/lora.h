// LoRA adapters on the model's projections: attaching a PEFT adapter (every module checked by
// name and shape) and merging it into dense weights (W' = W + scale * B A, as peft's
// merge_and_unload does).
#pragma once

#include "core/thread_pool.h"
#include "io/peft_adapter.h"
#include "model/weights.h"

namespace llamaq {

// Every projection of the model with its PEFT module name ("model.layers.0.self_attn.q_proj").
std::vector<std::pair<std::string, LinearWeight*>> named_projections(LlamaWeights& weights);

// Attaches the adapter's branches. An adapter module that is not a projection of this model, a
// shape that does not fit, or a targeted projection without tensors is an error naming the
// adapter file and the module.
void attach_lora(LlamaWeights& weights, const PeftAdapter& adapter);

// Replaces every projection that has a LoRA branch by the merged dense weight in `dtype` (BF16 or
// F32), computed in f32 (NF4 bases are dequantized first). With densify_all, 4-bit projections
// without a branch are dequantized too, so the result is dense everywhere.
void merge_lora(LlamaWeights& weights, DType dtype, ThreadPool& pool, bool densify_all = false);

}  // namespace llamaq
