// CPU reference attention over the paged KV cache: for each query token and head, scores against
// every visible key, an fp32 softmax with max subtraction, and the weighted sum of values.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace llamaq::cpu {
namespace {

// Address of the key or value vector of (position, kv head) in the block pool.
const float* kv_row(const Tensor& blocks, const int32_t* table, int64_t block_size,
                    int64_t position, int64_t kv_head) {
  const int64_t n_kv_heads = blocks.dim(2);
  const int64_t head_dim = blocks.dim(3);
  const int64_t block = table[position / block_size];
  const int64_t slot = block * block_size + position % block_size;
  return blocks.data_as<const float>() + (slot * n_kv_heads + kv_head) * head_dim;
}

// Token t's block table: the shared table, or row t of a per-token [n, max_blocks] table.
const int32_t* table_of(const KvLayerView& kv, int64_t t) {
  const int32_t* table = kv.block_table.data_as<const int32_t>();
  return kv.block_table.rank() == 2 ? table + t * kv.block_table.dim(1) : table;
}

}  // namespace

void kv_store(const Tensor& k, const Tensor& v, const Tensor& positions, const KvLayerView& kv) {
  const int64_t n = k.dim(0);
  const int64_t row = k.dim(1) * k.dim(2);
  const int32_t* pos = positions.data_as<const int32_t>();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t block = table_of(kv, t)[pos[t] / kv.block_size];
    const int64_t slot = block * kv.block_size + pos[t] % kv.block_size;
    std::copy_n(k.data_as<const float>() + t * row, row, kv.k_blocks.data_as<float>() + slot * row);
    std::copy_n(v.data_as<const float>() + t * row, row, kv.v_blocks.data_as<float>() + slot * row);
  }
}

void attention(ThreadPool& pool, const Tensor& q, const Tensor& positions, const KvLayerView& kv,
               Tensor& out) {
  const int64_t n = q.dim(0);
  const int64_t n_heads = q.dim(1);
  const int64_t head_dim = q.dim(2);
  const int64_t group = n_heads / kv.k_blocks.dim(2);  // query heads per kv head
  const float scale = float(1.0 / std::sqrt(double(head_dim)));
  const int32_t* pos = positions.data_as<const int32_t>();
  const float* qs = q.data_as<const float>();
  float* os = out.data_as<float>();
  pool.parallel_for(n * n_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / n_heads;
      const int64_t h = item % n_heads;
      const int64_t kv_head = h / group;
      const int32_t* table = table_of(kv, t);
      const int64_t visible = int64_t(pos[t]) + 1;
      const float* qv = qs + item * head_dim;
      scores.resize(size_t(visible));
      float max_score = -INFINITY;
      for (int64_t p = 0; p < visible; ++p) {
        const float* kv_k = kv_row(kv.k_blocks, table, kv.block_size, p, kv_head);
        scores[size_t(p)] = dot_f32(qv, kv_k, head_dim) * scale;
        max_score = std::max(max_score, scores[size_t(p)]);
      }
      double sum = 0;
      for (float& s : scores) {
        s = std::exp(s - max_score);
        sum += s;
      }
      float* o = os + item * head_dim;
      std::fill_n(o, head_dim, 0.0f);
      for (int64_t p = 0; p < visible; ++p) {
        const float weight = float(scores[size_t(p)] / sum);
        const float* kv_v = kv_row(kv.v_blocks, table, kv.block_size, p, kv_head);
        for (int64_t i = 0; i < head_dim; ++i) o[i] += weight * kv_v[i];
      }
    }
  });
}

}  // namespace llamaq::cpu
