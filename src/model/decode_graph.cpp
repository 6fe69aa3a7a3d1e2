// Decode steps as recorded graphs (CUDA graphs on the GPU). A decode step of a batch of B
// sequences, one new token each, issues the same ~15 ops per layer every time; launching them one
// by one costs more than the kernels themselves at batch 1. So the step is recorded once per batch
// size over fixed buffers and replayed: before each replay the host writes the token ids, their
// positions and the sequences' block tables into one input buffer (one copy), and the logits land
// in one output buffer. The graph is tied to the KV cache whose pools it reads.
#include "core/error.h"
#include "model/llama_model.h"

namespace llamaq {
namespace {

constexpr int64_t kMaxGraphBatch = 64;  // larger decode batches run eagerly

}  // namespace

bool LlamaModel::graph_eligible(std::span<const SequenceInput> items, LogitsFor which) const {
  if (!graphs_enabled_ || !graphs_supported_ || which != LogitsFor::LastToken) return false;
  if (int64_t(items.size()) > kMaxGraphBatch) return false;
  for (const SequenceInput& item : items) {
    if (item.ids.size() != 1) return false;
  }
  return true;
}

Tensor LlamaModel::decode_with_graph(KvCache& cache, std::span<const BatchSlice> slices,
                                     std::span<const int32_t> host_ids,
                                     std::span<const int32_t> host_positions) {
  const int64_t batch = int64_t(slices.size());
  const int64_t max_blocks = cache.max_blocks_per_sequence();
  std::unique_ptr<DecodeGraph>& entry = decode_graphs_[batch];
  if (!entry || entry->cache_id != cache.id() || entry->max_blocks != max_blocks) {
    entry.reset();  // release the old graph's buffers before recording a new one
    auto g = std::make_unique<DecodeGraph>();
    g->cache_id = cache.id();
    g->max_blocks = max_blocks;
    g->inputs = backend_.alloc(DType::I32, {batch * (2 + max_blocks)});
    g->logits = backend_.alloc(DType::F32, {batch, config_.vocab_size});
    const Tensor ids = g->inputs.slice_rows(0, batch);
    const Tensor positions = g->inputs.slice_rows(batch, batch);
    // One attention call for the whole batch, each token reading its row of the staged tables.
    const BatchSlice all{-1, 0, batch,
                         g->inputs.slice_rows(2 * batch, batch * max_blocks).reshaped({batch, max_blocks})};
    g->graph = backend_.capture([&] {
      run_forward(cache, ids, positions, slices, std::span(&all, 1), LogitsFor::LastToken, g->logits);
    });
    if (!g->graph) {
      graphs_supported_ = false;
      decode_graphs_.erase(batch);
      return Tensor();
    }
    entry = std::move(g);
  }
  std::vector<int32_t> staged(size_t(batch * (2 + max_blocks)), 0);
  for (int64_t i = 0; i < batch; ++i) {
    staged[size_t(i)] = host_ids[size_t(i)];
    staged[size_t(batch + i)] = host_positions[size_t(i)];
    const std::span<const int32_t> blocks = cache.blocks(slices[size_t(i)].seq);
    std::copy(blocks.begin(), blocks.end(), staged.begin() + 2 * batch + i * max_blocks);
  }
  backend_.copy_from_host(entry->inputs, staged.data());
  entry->graph->replay();
  return entry->logits;
}

}  // namespace llamaq
