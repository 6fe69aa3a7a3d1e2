// The attention op entry: checks the tensors, fills AttentionParams and picks a path. Few
// queries (decode, n <= kSplitKvMaxTokens) take the split-KV kernel, which spreads the keys of
// each query over enough blocks to fill the GPU; prefill takes the tensor-core flash kernel (head
// dims 64 and 128; the fp32 flash kernel for the others). Naive materializes the scores.
#include <algorithm>
#include <cmath>

#include "backend/cuda/attention_kernels.h"
#include "backend/cuda/attention_naive.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int64_t kSplitKvMaxTokens = 4;
constexpr int kMaxSplits = kSplitKvMaxSplits;
constexpr int kMinKeysPerSplit = 32;

AttentionParams make_params(const Tensor& q, const Tensor& positions, const KvLayerView& kv,
                            Tensor& out) {
  const char* op = "attention";
  require_tensor(q, DType::F32, 3, op, "q");
  const int64_t n = q.dim(0);
  const int64_t n_heads = q.dim(1);
  const int64_t head_dim = q.dim(2);
  require_positions_and_kv(positions, n, kv, op);
  const int64_t n_kv_heads = kv.k_blocks.dim(2);
  require(kv.k_blocks.dim(1) == kv.block_size && kv.k_blocks.dim(3) == head_dim, op,
          "q " + shape_to_string(q.shape()) + " does not fit the blocks " +
              shape_to_string(kv.k_blocks.shape()));
  require(n_kv_heads > 0 && n_heads % n_kv_heads == 0, op,
          std::to_string(n_heads) + " query heads are not a multiple of " +
              std::to_string(n_kv_heads) + " kv heads");
  require(attention_head_dim_supported(int(head_dim)), op,
          "head_dim " + std::to_string(head_dim) + " is not supported (16, 32, 64, 128)");
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, {n, n_heads * head_dim}, op, "out");
  require(n <= 65535 && n_heads <= 65535, op, "more than 65535 tokens or heads in one call");
  checked_int(kv.k_blocks.numel(), op, "KV cache elements per layer");
  AttentionParams p{};
  p.q = q.data_as<const float>();
  p.positions = positions.data_as<const int32_t>();
  p.k_blocks = kv.k_blocks.data();
  p.v_blocks = kv.v_blocks.data();
  p.kv_element = kv.k_blocks.dtype() == DType::BF16 ? KvElement::Bf16 : KvElement::F32;
  p.block_table = kv.block_table.data_as<const int32_t>();
  p.table_stride = kv.block_table.rank() == 2 ? kv.block_table.dim(1) : 0;
  p.out = out.data_as<float>();
  p.n_tokens = int(n);
  p.n_heads = int(n_heads);
  p.n_kv_heads = int(n_kv_heads);
  p.group = int(n_heads / n_kv_heads);
  p.block_size = int(kv.block_size);
  p.head_dim = int(head_dim);
  p.scale = float(1.0 / std::sqrt(double(head_dim)));  // as the CPU reference
  return p;
}

// Entries of one sequence's block table.
int64_t table_width(const KvLayerView& kv) {
  return kv.block_table.dim(kv.block_table.rank() - 1);
}

// Enough splits for about eight blocks per multiprocessor (each block's key loop is latency
// bound), no more than the cache can fill.
int choose_splits(const CudaContext& ctx, const AttentionParams& p, int64_t max_keys) {
  const int64_t items = int64_t(p.n_tokens) * p.n_heads;
  const int64_t wanted = (8 * int64_t(ctx.multiprocessors()) + items - 1) / items;
  const int64_t by_keys = (max_keys + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  return int(std::max<int64_t>(1, std::min<int64_t>({wanted, by_keys, kMaxSplits})));
}

void run_split_kv(CudaContext& ctx, const AttentionParams& p, const KvLayerView& kv) {
  const int64_t max_keys = table_width(kv) * kv.block_size;
  const int n_splits = choose_splits(ctx, p, max_keys);
  const int64_t items = int64_t(p.n_tokens) * p.n_heads * n_splits;
  Tensor partial_out = ctx.empty(DType::F32, {items, p.head_dim}, "attention");
  Tensor partial_stats = ctx.empty(DType::F32, {items, 2}, "attention");
  const SplitKvWorkspace ws{partial_out.data_as<float>(), partial_stats.data_as<float>(), n_splits,
                            ctx.arrival_counters(int64_t(p.n_tokens) * p.n_heads)};
  launch_attention_split_kv(p, ws, ctx.stream());
}

// The tensor-core kernel rounds keys and values to bf16 as it loads them. An f32 cache no larger
// than twice this call's tokens (the trainer's, which holds exactly its sequence) is rounded in
// one pass first, so that the kernel streams bf16 tiles by cp.async instead of converting each
// tile on the critical path: the same values, a third less time per call. A large f32 cache (an
// inference `--kv-dtype f32` run) is read as it is.
void run_flash_mma(CudaContext& ctx, AttentionParams p, const KvLayerView& kv) {
  const int64_t call_elements = int64_t(p.n_tokens) * p.n_kv_heads * p.head_dim;
  if (p.kv_element != KvElement::F32 || kv.k_blocks.numel() > 2 * call_elements) {
    launch_attention_flash_mma(p, ctx.stream());
    return;
  }
  Tensor k16 = ctx.empty(DType::BF16, kv.k_blocks.shape(), "attention");
  Tensor v16 = ctx.empty(DType::BF16, kv.v_blocks.shape(), "attention");
  convert_activations(ctx, kv.k_blocks, k16, "attention");
  convert_activations(ctx, kv.v_blocks, v16, "attention");
  p.k_blocks = k16.data();
  p.v_blocks = v16.data();
  p.kv_element = KvElement::Bf16;
  launch_attention_flash_mma(p, ctx.stream());
}

}  // namespace

void attention(CudaContext& ctx, const Tensor& q, const Tensor& positions, const KvLayerView& kv,
               Tensor& out, AttentionPath path) {
  const AttentionParams p = make_params(q, positions, kv, out);
  if (p.n_tokens == 0 || p.n_heads == 0) return;
  if (p.table_stride != 0 && path != AttentionPath::SplitKv) {
    // Tokens of different sequences (one table row each): the split-KV kernel reads a row per
    // query; the other paths take one sequence at a time.
    if (path == AttentionPath::Auto) {
      path = AttentionPath::SplitKv;
    } else {
      for (int64_t t = 0; t < p.n_tokens; ++t) {
        KvLayerView one = kv;
        one.block_table = kv.block_table.slice_rows(t, 1).reshaped({table_width(kv)});
        Tensor out_t = out.slice_rows(t, 1);
        attention(ctx, q.slice_rows(t, 1), positions.slice_rows(t, 1), one, out_t, path);
      }
      return;
    }
  }
  if (path == AttentionPath::Auto) {
    path = p.n_tokens <= kSplitKvMaxTokens ? AttentionPath::SplitKv : AttentionPath::Flash;
  }
  if (path == AttentionPath::Flash && !attention_flash_mma_supported(p.head_dim)) {
    path = AttentionPath::FlashFp32;
  }
  switch (path) {
    case AttentionPath::SplitKv:
      run_split_kv(ctx, p, kv);
      break;
    case AttentionPath::FlashFp32:
      launch_attention_flash(p, ctx.stream());
      break;
    case AttentionPath::Naive:
      attention_naive(
          ctx, p, checked_int(kv.block_table.dim(0) * kv.block_size, "attention", "KV capacity"));
      break;
    default:
      run_flash_mma(ctx, p, kv);
      break;
  }
}

}  // namespace llamaq::cuda
