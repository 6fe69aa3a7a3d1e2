// Pieces the QLoRA tests share (CPU golden, bf16 emulation and GPU): the PEFT reference batch of
// a fixture's lora/ folder, and a fixture checkpoint quantized to NF4 as the QLoRA step tests
// train it.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/loader.h"
#include "test_util.h"
#include "train/lora_model.h"

namespace llamaq::test {

// lora/reference.safetensors: two rows of input ids and labels (kIgnoreLabel where masked).
struct LoraReferenceBatch {
  SafetensorsFile ref;

  explicit LoraReferenceBatch(const std::filesystem::path& model_dir)
      : ref(SafetensorsFile::open(model_dir / "lora" / "reference.safetensors")) {}

  // Row r of a [2, seq] tensor of the reference.
  std::vector<int32_t> row(const std::string& tensor, int64_t r) const {
    const Tensor t = ref.tensor(tensor);
    const auto all = to_doubles(t);
    return {all.begin() + r * t.dim(1), all.begin() + (r + 1) * t.dim(1)};
  }

  // The unmasked next-token targets of both rows (position t predicts labels[t + 1]).
  int64_t targets() const {
    int64_t count = 0;
    for (int64_t r = 0; r < 2; ++r) {
      const auto labels = row("labels", r);
      for (size_t t = 1; t < labels.size(); ++t)
        count += labels[t] != kIgnoreLabel;
    }
    return count;
  }
};

// A fixture checkpoint bound (the checkpoint stays open: the weights point into it) and quantized
// to NF4 with the default options (double quantization, blocks of 64).
struct Nf4FixtureModel {
  LlamaConfig config;
  CheckpointTensors checkpoint;
  LlamaWeights weights;

  explicit Nf4FixtureModel(const std::filesystem::path& dir)
      : config(load_llama_config(dir / "config.json")),
        checkpoint(CheckpointTensors::open(dir)),
        weights(bind_llama_weights(config, checkpoint)) {
    LoadOptions quant;
    quant.quantize_nf4 = true;
    quantize_weights(weights, quant);
  }
};

}  // namespace llamaq::test
