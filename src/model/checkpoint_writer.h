// Writes Llama weights as a Hugging Face checkpoint folder: model.safetensors (dense tensors as
// they are, 4-bit projections in transformers + bitsandbytes layout), config.json, and the
// tokenizer and generation files copied from the source folder. Every file is written atomically.
#pragma once

#include <filesystem>

#include "model/weights.h"

namespace llamaq {

struct CheckpointWriteOptions {
  bool double_quant = true;  // recorded in quantization_config when weights are 4-bit
};

// `source_dir` provides config.json (extended with quantization_config when any projection is
// 4-bit) and the files copied alongside. Returns the bytes of tensor data written.
int64_t write_llama_checkpoint(const std::filesystem::path& out_dir,
                               const std::filesystem::path& source_dir,
                               const LlamaConfig& config, const LlamaWeights& weights,
                               const CheckpointWriteOptions& options);

}  // namespace llamaq
