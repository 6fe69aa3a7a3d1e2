#include "backend/cpu/attention_tiled.h"

#include <bit>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/kv_q8.h"
#include "core/error.h"

namespace llamaq::cpu {
namespace {

constexpr int64_t kMaxGroup = 64;  // query heads per KV head handled by one item

// rows x head_dim values of a block (f32 or bf16; f16 goes through the kernel table) widened.
__attribute__((target_clones("avx512f", "avx2", "default"))) void widen_tile_bf16_f32(
    const void* src, bool bf16, int64_t count, float* dst) {
  if (bf16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < count; ++i)
      dst[i] = std::bit_cast<float>(uint32_t(s[i]) << 16);
  } else {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < count; ++i)
      dst[i] = s[i];
  }
}

// One query head against one tile: scores, the online softmax update and the value sum.
// state: running max m and denominator l; o [head_dim] the unnormalized output.
__attribute__((target_clones("avx512f", "avx2", "default"))) void attend_tile(
    const float* qv, const float* keys, const float* values, int64_t rows, int64_t head_dim,
    float scale, float* scores, float& m, float& l, float* o) {
  float tile_max = -INFINITY;
  const int64_t body = head_dim / 16 * 16;
  for (int64_t p = 0; p < rows; ++p) {
    // 16 independent partial sums (one vector register) over whole 16-wide steps, so the loop
    // vectorizes without reassociating; then the tail.
    float acc[16] = {};
    const float* key = keys + p * head_dim;
    for (int64_t i = 0; i < body; i += 16) {
      for (int64_t lane = 0; lane < 16; ++lane)
        acc[lane] += qv[i + lane] * key[i + lane];
    }
    for (int64_t i = body; i < head_dim; ++i)
      acc[i - body] += qv[i] * key[i];
    float s = 0;
    for (float a : acc)
      s += a;
    scores[p] = s * scale;
    tile_max = std::max(tile_max, scores[p]);
  }
  const float new_max = std::max(m, tile_max);
  const float correction = std::exp(m - new_max);  // exp(-inf) = 0 on the first tile
  float tile_sum = 0;
  for (int64_t p = 0; p < rows; ++p) {
    scores[p] = std::exp(scores[p] - new_max);
    tile_sum += scores[p];
  }
  for (int64_t i = 0; i < head_dim; ++i)
    o[i] *= correction;
  for (int64_t p = 0; p < rows; ++p) {
    const float w = scores[p];
    for (int64_t i = 0; i < head_dim; ++i)
      o[i] += w * values[p * head_dim + i];
  }
  l = l * correction + tile_sum;
  m = new_max;
}

struct Job {
  const KvLayerView& kv;
  const float* q;
  const int32_t* pos;
  float* out;
  int64_t n_heads, n_kv_heads, head_dim, group;
  float scale;
  DType dtype;
  WidenScalesKernel widen_f16;
};

// `count` values of a row at element `index` of a pool (keys: is_key) widened to f32.
void widen_tile(const Job& job, bool is_key, int64_t index, int64_t count, float* dst) {
  const Tensor& pool = is_key ? job.kv.k_blocks : job.kv.v_blocks;
  if (job.dtype == DType::I8) {
    const int64_t group = kv_q8_group(job.head_dim);
    const Tensor& scales = is_key ? job.kv.k_scales : job.kv.v_scales;
    dequantize_q8(pool.data_as<const int8_t>() + index,
                  scales.data_as<const float>() + index / group, count, group, dst);
    return;
  }
  const int64_t elem = job.dtype == DType::F32 ? 4 : 2;
  const void* src = static_cast<const char*>(pool.data()) + index * elem;
  if (job.dtype == DType::F16) {
    job.widen_f16(static_cast<const uint16_t*>(src), count, 1.0f, dst);
  } else {
    widen_tile_bf16_f32(src, job.dtype == DType::BF16, count, dst);
  }
}

void attend_item(const Job& job, int64_t t, int64_t kv_head, std::vector<float>& buffer) {
  const int64_t bs = job.kv.block_size;
  const int64_t d = job.head_dim;
  const int64_t g = job.group;
  buffer.resize(size_t(2 * bs * d + bs + g * 2));
  float* keys = buffer.data();
  float* values = keys + bs * d;
  float* scores = values + bs * d;
  float* m = scores + bs;
  float* l = m + g;
  float* o = job.out + (t * job.n_heads + kv_head * g) * d;
  for (int64_t h = 0; h < g; ++h) {
    m[h] = -INFINITY;
    l[h] = 0;
  }
  std::fill_n(o, g * d, 0.0f);
  // The shared table, or token t's row of a per-token [n, max_blocks] table.
  const int32_t* table = job.kv.block_table.data_as<const int32_t>() +
                         (job.kv.block_table.rank() == 2 ? t * job.kv.block_table.dim(1) : 0);
  const int64_t visible = int64_t(job.pos[t]) + 1;
  for (int64_t p0 = 0; p0 < visible; p0 += bs) {
    const int64_t rows = std::min(bs, visible - p0);
    const int64_t block = table[p0 / bs];
    // Rows of this block and kv head are head_dim apart per slot times the kv heads.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t index = ((block * bs + r) * job.n_kv_heads + kv_head) * d;
      widen_tile(job, /*is_key=*/true, index, d, keys + r * d);
      widen_tile(job, /*is_key=*/false, index, d, values + r * d);
    }
    for (int64_t h = 0; h < g; ++h) {
      const float* qv = job.q + (t * job.n_heads + kv_head * g + h) * d;
      attend_tile(qv, keys, values, rows, d, job.scale, scores, m[h], l[h], o + h * d);
    }
  }
  for (int64_t h = 0; h < g; ++h) {
    const float inv = 1.0f / l[h];
    for (int64_t i = 0; i < d; ++i)
      o[h * d + i] *= inv;
  }
}

}  // namespace

void attention_tiled(ThreadPool& pool, const Tensor& q, const Tensor& positions,
                     const KvLayerView& kv, Tensor& out, WidenScalesKernel widen_f16) {
  check_kv_dtype(kv);
  const DType dtype = kv.k_blocks.dtype();
  if (dtype == DType::F16 && !widen_f16) fail("cpu attention: no f16 widening kernel given");
  const int64_t n_kv_heads = kv.k_blocks.dim(2);
  const Job job{kv,
                q.data_as<const float>(),
                positions.data_as<const int32_t>(),
                out.data_as<float>(),
                q.dim(1),
                n_kv_heads,
                q.dim(2),
                q.dim(1) / n_kv_heads,
                float(1.0 / std::sqrt(double(q.dim(2)))),
                dtype,
                widen_f16};
  if (job.group > kMaxGroup) fail("cpu attention: {} query heads per KV head", job.group);
  pool.parallel_for(q.dim(0) * n_kv_heads, [&job](int64_t begin, int64_t end) {
    thread_local std::vector<float> buffer;
    for (int64_t item = begin; item < end; ++item) {
      attend_item(job, item / job.n_kv_heads, item % job.n_kv_heads, buffer);
    }
  });
}

}  // namespace llamaq::cpu
