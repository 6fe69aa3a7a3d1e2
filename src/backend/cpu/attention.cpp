// CPU reference attention over the paged KV cache: for each query token and head, scores against
// every visible key, an fp32 softmax with max subtraction, and the weighted sum of values. The
// cache holds f32, bf16 or f16 (stored rounded to nearest even, read back widened), or q8
// (kv_q8.h: int8 with a scale per group, read back as int8 * scale).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kv_q8.h"
#include "core/error.h"

namespace llamaq::cpu {
namespace {

// The key or value vector of (position, kv head) in the block pool (with its q8 scales for an i8
// pool), widened to f32 in `out`.
void load_kv_row(const Tensor& blocks, const Tensor& scales, const int32_t* table,
                 int64_t block_size, int64_t position, int64_t kv_head, float* out) {
  const int64_t n_kv_heads = blocks.dim(2);
  const int64_t head_dim = blocks.dim(3);
  const int64_t block = table[position / block_size];
  const int64_t slot = block * block_size + position % block_size;
  const int64_t offset = (slot * n_kv_heads + kv_head) * head_dim;
  if (blocks.dtype() == DType::I8) {
    const int64_t group = kv_q8_group(head_dim);
    dequantize_q8(blocks.data_as<const int8_t>() + offset,
                  scales.data_as<const float>() + offset / group, head_dim, group, out);
  } else if (blocks.dtype() == DType::BF16) {
    const uint16_t* src = blocks.data_as<const uint16_t>() + offset;
    for (int64_t i = 0; i < head_dim; ++i)
      out[i] = bf16_to_float(src[i]);
  } else if (blocks.dtype() == DType::F16) {
    const uint16_t* src = blocks.data_as<const uint16_t>() + offset;
    for (int64_t i = 0; i < head_dim; ++i)
      out[i] = fp16_to_float(src[i]);
  } else {
    std::copy_n(blocks.data_as<const float>() + offset, head_dim, out);
  }
}

}  // namespace

void check_kv_dtype(const KvLayerView& kv) {
  const DType dtype = kv.k_blocks.dtype();
  if (!kv_dtype_supported(dtype) || kv.v_blocks.dtype() != dtype) {
    fail("cpu attention: the KV cache must be f32, bf16, f16 or i8 (q8), got {}",
         dtype_name(dtype));
  }
  if (dtype != DType::I8) return;
  const Shape& shape = kv.k_blocks.shape();
  const Shape scale_shape = {shape[0], shape[1], shape[2], shape[3] / kv_q8_group(shape[3])};
  for (const Tensor* scales : {&kv.k_scales, &kv.v_scales}) {
    if (scales->dtype() != DType::F32 || scales->shape() != scale_shape) {
      fail("cpu attention: a q8 KV cache needs f32 scales {}, got {}", shape_to_string(scale_shape),
           shape_to_string(scales->shape()));
    }
  }
}

namespace {

// Stores `count` f32 values (whole heads) as the cache's dtype, at element `offset`.
void store_kv(const float* src, int64_t count, const Tensor& blocks, const Tensor& scales,
              int64_t offset) {
  if (blocks.dtype() == DType::I8) {
    const int64_t group = kv_q8_group(blocks.dim(3));
    quantize_q8(src, count, group, blocks.data_as<int8_t>() + offset,
                scales.data_as<float>() + offset / group);
  } else if (blocks.dtype() == DType::BF16) {
    uint16_t* dst = blocks.data_as<uint16_t>() + offset;
    for (int64_t i = 0; i < count; ++i)
      dst[i] = float_to_bf16(src[i]);
  } else if (blocks.dtype() == DType::F16) {
    uint16_t* dst = blocks.data_as<uint16_t>() + offset;
    for (int64_t i = 0; i < count; ++i)
      dst[i] = float_to_fp16(src[i]);
  } else {
    std::copy_n(src, count, blocks.data_as<float>() + offset);
  }
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
  check_kv_dtype(kv);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t block = table_of(kv, t)[pos[t] / kv.block_size];
    const int64_t slot = block * kv.block_size + pos[t] % kv.block_size;
    store_kv(k.data_as<const float>() + t * row, row, kv.k_blocks, kv.k_scales, slot * row);
    store_kv(v.data_as<const float>() + t * row, row, kv.v_blocks, kv.v_scales, slot * row);
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
  check_kv_dtype(kv);
  pool.parallel_for(n * n_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> kv_vec(static_cast<size_t>(head_dim));
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
        load_kv_row(kv.k_blocks, kv.k_scales, table, kv.block_size, p, kv_head, kv_vec.data());
        scores[size_t(p)] = dot_f32(qv, kv_vec.data(), head_dim) * scale;
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
        load_kv_row(kv.v_blocks, kv.v_scales, table, kv.block_size, p, kv_head, kv_vec.data());
        for (int64_t i = 0; i < head_dim; ++i)
          o[i] += weight * kv_vec[size_t(i)];
      }
    }
  });
}

}  // namespace llamaq::cpu
