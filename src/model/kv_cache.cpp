#include "model/kv_cache.h"

#include <atomic>

#include "core/error.h"

namespace llamaq {
namespace {

uint64_t next_cache_id() {
  static std::atomic<uint64_t> counter{0};
  return ++counter;
}

}  // namespace

KvCache::KvCache(Backend& backend, const LlamaConfig& config, int64_t capacity_tokens,
                 int64_t block_size, std::optional<DType> dtype)
    : backend_(backend),
      id_(next_cache_id()),
      block_size_(block_size),
      capacity_tokens_(capacity_tokens),
      dtype_(dtype.value_or(backend.preferred_kv_dtype())) {
  if (block_size <= 0 || capacity_tokens <= 0)
    fail("KV cache: capacity and block size must be > 0");
  if (dtype_ != DType::F32 && dtype_ != DType::BF16 && dtype_ != DType::F16 &&
      dtype_ != DType::I8) {
    fail("KV cache: dtype {} is not supported (f32, bf16, f16 or i8 for q8)", dtype_name(dtype_));
  }
  n_blocks_ = (capacity_tokens + block_size - 1) / block_size;
  const Shape shape = {n_blocks_, block_size_, config.num_key_value_heads, config.head_dim};
  const Shape scale_shape = {n_blocks_, block_size_, config.num_key_value_heads,
                             config.head_dim / kv_q8_group(config.head_dim)};
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    k_blocks_.push_back(backend_.alloc(dtype_, shape));
    v_blocks_.push_back(backend_.alloc(dtype_, shape));
    if (dtype_ == DType::I8) {
      k_scales_.push_back(backend_.alloc(DType::F32, scale_shape));
      v_scales_.push_back(backend_.alloc(DType::F32, scale_shape));
    }
  }
  for (int64_t b = n_blocks_ - 1; b >= 0; --b)
    free_blocks_.push_back(int32_t(b));
}

int KvCache::add_sequence() {
  for (size_t i = 0; i < sequences_.size(); ++i) {
    if (!sequences_[i].active) {
      sequences_[i] = Sequence{};
      sequences_[i].active = true;
      sequences_[i].table = backend_.alloc(DType::I32, {n_blocks_});
      return int(i);
    }
  }
  Sequence s;
  s.active = true;
  s.table = backend_.alloc(DType::I32, {n_blocks_});
  sequences_.push_back(std::move(s));
  return int(sequences_.size() - 1);
}

KvCache::Sequence& KvCache::sequence(int seq) {
  if (seq < 0 || size_t(seq) >= sequences_.size() || !sequences_[size_t(seq)].active) {
    fail("KV cache: no sequence {}", seq);
  }
  return sequences_[size_t(seq)];
}

const KvCache::Sequence& KvCache::sequence(int seq) const {
  return const_cast<KvCache*>(this)->sequence(seq);
}

void KvCache::remove_sequence(int seq) {
  truncate(seq, 0);
  sequence(seq).active = false;
}

int64_t KvCache::length(int seq) const {
  return sequence(seq).length;
}

void KvCache::upload_table(Sequence& s) {
  std::vector<int32_t> table(size_t(n_blocks_), 0);
  std::copy(s.blocks.begin(), s.blocks.end(), table.begin());
  backend_.copy_from_host(s.table, table.data());
}

void KvCache::reserve(int seq, int64_t n_tokens) {
  Sequence& s = sequence(seq);
  if (s.length + n_tokens > capacity_tokens_) {
    fail(
        "context full: {} tokens + {} more exceed the context size of {} tokens (raise the "
        "context size)",
        s.length, n_tokens, capacity_tokens_);
  }
  const int64_t needed_blocks = (s.length + n_tokens + block_size_ - 1) / block_size_;
  const int64_t missing = needed_blocks - int64_t(s.blocks.size());
  if (missing <= 0) return;
  if (missing > int64_t(free_blocks_.size())) {
    fail(
        "KV cache full: {} more tokens need {} blocks of {}, {} free (cache holds {} tokens; "
        "raise the context size)",
        n_tokens, missing, block_size_, free_blocks_.size(), n_blocks_ * block_size_);
  }
  for (int64_t i = 0; i < missing; ++i) {
    s.blocks.push_back(free_blocks_.back());
    free_blocks_.pop_back();
  }
  upload_table(s);
}

void KvCache::advance(int seq, int64_t n_tokens) {
  Sequence& s = sequence(seq);
  if ((s.length + n_tokens + block_size_ - 1) / block_size_ > int64_t(s.blocks.size())) {
    fail("KV cache: advance past the reserved blocks");
  }
  s.length += n_tokens;
}

void KvCache::truncate(int seq, int64_t new_length) {
  Sequence& s = sequence(seq);
  if (new_length < 0 || new_length > s.length) fail("KV cache: bad truncate length {}", new_length);
  s.length = new_length;
  const size_t keep = size_t((new_length + block_size_ - 1) / block_size_);
  while (s.blocks.size() > keep) {
    free_blocks_.push_back(s.blocks.back());
    s.blocks.pop_back();
  }
}

KvLayerView KvCache::layer_view(int layer, int seq) const {
  return layer_view(layer, sequence(seq).table);
}

KvLayerView KvCache::layer_view(int layer, const Tensor& table) const {
  if (table.rank() < 1 || table.rank() > 2 || table.dim(table.rank() - 1) != n_blocks_) {
    fail("KV cache: a block table needs rows of {} entries", n_blocks_);
  }
  KvLayerView view{k_blocks_.at(size_t(layer)), v_blocks_.at(size_t(layer)), table, block_size_};
  if (dtype_ == DType::I8) {
    view.k_scales = k_scales_.at(size_t(layer));
    view.v_scales = v_scales_.at(size_t(layer));
  }
  return view;
}

}  // namespace llamaq
