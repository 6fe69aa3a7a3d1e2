// Checkpoint folders: sharded and single-file loading, bf16/fp16/fp32 weights, and a clear error
// naming the tensor and file for every missing, extra, misshapen or wrongly typed tensor.
#include <cstring>
#include <fstream>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/loader.h"
#include "test_util.h"

namespace llamaq {
namespace {

namespace fs = std::filesystem;

struct OwnedTensor {
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};
using TensorMap = std::map<std::string, OwnedTensor>;

TensorMap read_all(const fs::path& file) {
  const auto st = SafetensorsFile::open(file);
  TensorMap out;
  for (const auto& e : st.entries()) {
    const Tensor t = st.tensor(e);
    const auto* p = static_cast<const uint8_t*>(t.data());
    out[e.name] = {e.dtype, e.shape, std::vector<uint8_t>(p, p + t.nbytes())};
  }
  return out;
}

// Writes `tensors` as a single-file checkpoint next to a copy of tiny-llama31's config.json.
fs::path write_checkpoint(const test::TempDir& dir, const TensorMap& tensors,
                          const std::string& name = "model.safetensors") {
  fs::copy_file(test::model_dir("tiny-llama31") / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  std::vector<SafetensorsTensorData> data;
  for (const auto& [n, t] : tensors) data.push_back({n, t.dtype, t.shape, t.bytes});
  write_safetensors(dir / name, data);
  return dir.path();
}

TensorMap tiny_llama31() { return read_all(test::model_dir("tiny-llama31") / "model.safetensors"); }

void expect_load_error(const fs::path& dir, std::initializer_list<std::string> parts) {
  auto backend = make_cpu_backend(1);
  test::expect_error([&] { load_model(dir, *backend); }, parts);
}

TEST(Checkpoint, OpensTheShardedFixture) {
  const auto ckpt = CheckpointTensors::open(test::model_dir("tiny-hd128-sharded"));
  EXPECT_TRUE(ckpt.sharded());
  EXPECT_EQ(ckpt.files().size(), 12u);
  EXPECT_EQ(ckpt.names().size(), 2u + 2u * 9u + 1u);
  ASSERT_NE(ckpt.find("lm_head.weight").entry, nullptr);
}

TEST(Checkpoint, MissingTensorIsNamedWithItsFileAndShape) {
  test::TempDir dir;
  auto tensors = tiny_llama31();
  tensors.erase("model.layers.1.mlp.up_proj.weight");
  expect_load_error(write_checkpoint(dir, tensors),
                    {"model.safetensors", "missing tensor `model.layers.1.mlp.up_proj.weight`",
                     "[320, 128]"});
}

TEST(Checkpoint, ExtraTensorIsAnErrorButStrayRotaryCachesAreIgnored) {
  test::TempDir dir;
  auto tensors = tiny_llama31();
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = {DType::F32, {8}, std::vector<uint8_t>(32)};
  auto backend = make_cpu_backend(1);
  EXPECT_NO_THROW(load_model(write_checkpoint(dir, tensors), *backend));
  tensors["model.layers.7.mlp.extra.weight"] = {DType::BF16, {2}, std::vector<uint8_t>(4)};
  expect_load_error(write_checkpoint(dir, tensors),
                    {"model.safetensors", "unexpected tensor `model.layers.7.mlp.extra.weight`"});
}

TEST(Checkpoint, MisshapenAndWronglyTypedTensorsAreNamed) {
  test::TempDir dir;
  auto tensors = tiny_llama31();
  tensors["model.layers.2.self_attn.k_proj.weight"].shape = {128, 32};
  expect_load_error(write_checkpoint(dir, tensors),
                    {"model.safetensors", "`model.layers.2.self_attn.k_proj.weight`",
                     "shape [128, 32], expected [32, 128]"});
  tensors = tiny_llama31();
  tensors["model.norm.weight"].dtype = DType::I16;
  expect_load_error(write_checkpoint(dir, tensors), {"`model.norm.weight`", "dtype I16"});
}

TEST(Checkpoint, Fp16AndFp32CheckpointsGiveTheReferenceLogits) {
  const auto reference = SafetensorsFile::open(test::model_dir("tiny-llama31") / "reference.safetensors");
  const auto ids_d = test::to_doubles(reference.tensor("input_ids_7"));
  const std::vector<int32_t> ids(ids_d.begin(), ids_d.end());
  const auto expected = test::to_doubles(reference.tensor("logits_7"));
  for (DType target : {DType::F32, DType::F16}) {
    SCOPED_TRACE(std::string(dtype_name(target)));
    test::TempDir dir;
    auto tensors = tiny_llama31();
    for (auto& [name, t] : tensors) {
      std::vector<uint8_t> converted;
      for (size_t i = 0; i < t.bytes.size(); i += 2) {
        uint16_t bits;
        std::memcpy(&bits, &t.bytes[i], 2);
        const float value = bf16_to_float(bits);
        if (target == DType::F32) {
          converted.insert(converted.end(), reinterpret_cast<const uint8_t*>(&value),
                           reinterpret_cast<const uint8_t*>(&value) + 4);
        } else {
          const uint16_t half = float_to_fp16(value);
          converted.insert(converted.end(), reinterpret_cast<const uint8_t*>(&half),
                           reinterpret_cast<const uint8_t*>(&half) + 2);
        }
      }
      t = {target, t.shape, converted};
    }
    auto backend = make_cpu_backend(2, cpu::Isa::Reference);
    LoadedModel loaded = load_model(write_checkpoint(dir, tensors), *backend);
    KvCache cache(*backend, loaded.config, 7);
    const auto logits = loaded.model->forward_to_host(cache, cache.add_sequence(), ids, LogitsFor::AllTokens);
    // fp32 weights are the bf16 values exactly; fp16 rounds only values below fp16's normal
    // range, which moves logits by far less than the 1e-4 golden bound.
    EXPECT_LE(test::relative_error(std::vector<double>(logits.begin(), logits.end()), expected), 1e-4);
  }
}

// --no-mmap: every weight (bf16, and NF4's packed bytes and scales) is copied out of the mapping
// with the same bytes, a tied LM head keeps sharing the embedding, and the model gives the same
// logits bit for bit.
TEST(Checkpoint, NoMmapCopiesEveryWeightOutOfTheMapping) {
  for (const std::string fixture : {"tiny-llama31", "tiny-llama31-bnb-nf4-nodq", "tiny-llama3-vocab"}) {
    SCOPED_TRACE(fixture);
    const fs::path dir = test::model_dir(fixture);
    const LlamaConfig config = load_llama_config(dir / "config.json");
    const CheckpointTensors checkpoint = CheckpointTensors::open(dir);
    const LlamaWeights mapped = bind_llama_weights(config, checkpoint);
    LlamaWeights owned = mapped;
    EXPECT_GT(copy_weights_into_memory(owned), 0);
    auto expect_copied = [](const Tensor& a, const Tensor& b, const std::string& what) {
      ASSERT_EQ(a.nbytes(), b.nbytes()) << what;
      EXPECT_NE(a.data(), b.data()) << what << " still points into the mapping";
      EXPECT_EQ(std::memcmp(a.data(), b.data(), size_t(a.nbytes())), 0) << what;
    };
    expect_copied(owned.embed_tokens, mapped.embed_tokens, "embed_tokens");
    const LinearWeight& q = owned.layers[0].q_proj;
    const LinearWeight& q_mapped = mapped.layers[0].q_proj;
    if (q.nf4) {
      expect_copied(q.nf4->packed, q_mapped.nf4->packed, "q_proj packed");
      expect_copied(q.nf4->absmax, q_mapped.nf4->absmax, "q_proj absmax");
    } else {
      expect_copied(q.weight, q_mapped.weight, "q_proj");
    }
    if (config.tie_word_embeddings) {
      EXPECT_EQ(owned.lm_head.weight.data(), owned.embed_tokens.data());
    }
    auto logits = [&](const LlamaWeights& w) {
      auto backend = make_cpu_backend(2);
      LlamaModel model(config, w, *backend);
      KvCache cache(*backend, config, 5);
      const std::vector<int32_t> ids = {1, 5, 9, 2, 7};
      return model.forward_to_host(cache, cache.add_sequence(), ids, LogitsFor::AllTokens);
    };
    EXPECT_EQ(logits(owned), logits(mapped));
  }
}

TEST(Checkpoint, MissingShardAndBrokenIndexAreReported) {
  test::TempDir dir;
  for (const auto& entry : fs::directory_iterator(test::model_dir("tiny-hd128-sharded"))) {
    if (entry.is_regular_file()) fs::copy_file(entry.path(), dir / entry.path().filename().string());
  }
  fs::remove(dir / "model-00007-of-00012.safetensors");
  expect_load_error(dir.path(), {"model-00007-of-00012.safetensors", "missing"});
  test::write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\": {\"a\": \"../x\"}}");
  expect_load_error(dir.path(), {"model.safetensors.index.json", "not a file name"});
  test::write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\": [");
  expect_load_error(dir.path(), {"model.safetensors.index.json", "invalid JSON"});
}

TEST(Checkpoint, TruncatedFileAndMissingFilesAreReported) {
  test::TempDir dir;
  const fs::path path = write_checkpoint(dir, tiny_llama31());
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 100);
  expect_load_error(path, {"model.safetensors", "truncated"});
  fs::remove(dir / "model.safetensors");
  expect_load_error(path, {"no model.safetensors"});
  fs::remove(dir / "config.json");
  expect_load_error(path, {"config.json", "missing"});
  expect_load_error(dir / "nope", {"nope", "not a checkpoint folder"});
}

}  // namespace
}  // namespace llamaq
