// Causal GQA attention backward for one contiguous sequence (key t is token t), FlashAttention-2
// style: the probabilities are recomputed tile by tile from Q, K and the row log-sum-exp, never
// stored whole.
//  1. row_stats_kernel: one block per (16-query tile, head) runs the online softmax over its key
//     tiles and writes lse = max + log(sum exp) of each query row, and with the same running
//     weights delta = sum_s P_s dP_s (dP_s = dO . V_s).
//  2. attention_backward_kernel: one block per (16-key tile, KV head) keeps the tile's K and V in
//     shared memory and its dK, dV accumulators in registers, and walks the query tiles at or
//     after it for every query head of its group: S = Q K^T * scale, P = exp(S - lse),
//     dV += P^T dO, dP = dO V^T, dS = P (dP - delta) * scale, dK += dS^T Q, dQ += dS K (dQ by f32
//     atomics, since every key tile adds to it).
// delta is computed from P and dP, as the CPU reference does, not as rowsum(dO * O) from the
// forward output: the training forward's attention runs on bf16 tensor cores, and an O rounded
// there would make dP - delta (a difference of nearly equal terms) inconsistent with the fp32 P
// and dP used here; with one key it would give dS = dP - delta != 0 where the exact value is 0.
// The forward output is therefore not read. fp32 throughout (a tensor-core version is the speed
// work still to come); head_dim <= 128.
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kTile = 16;                // queries and keys per tile
constexpr int kThreads = kTile * kTile;  // one thread per (query, key) pair of a tile
constexpr int kMaxHeadDim = 128;
constexpr int kStride = kMaxHeadDim + 1;  // padded shared rows: no bank conflicts across rows
constexpr int kColsPerThread = kMaxHeadDim / kTile;

struct AttentionBackwardParams {
  const float* q;      // [n, H, D] f32
  const float* k;      // [n, Hkv, D] f32
  const float* v;      // [n, Hkv, D] f32
  const float* d_out;  // [n, H, D] f32
  float* dq;           // [n, H, D] f32, zeroed, accumulated with atomics
  float* dk;           // [n, Hkv, D] f32
  float* dv;           // [n, Hkv, D] f32
  float* lse;          // [n, H] f32 scratch
  float* delta;        // [n, H] f32 scratch: sum_s P_s dP_s
  int n;
  int heads;
  int kv_heads;
  int head_dim;
  float scale;
};

// Copies rows [row0, row0 + kTile) of head `head` of a [n, heads, D] tensor into shared memory
// (zeros past the end).
__device__ void load_tile(float (*dst)[kStride], const float* src, int row0, int n, int heads,
                          int head, int head_dim) {
  for (int i = threadIdx.x; i < kTile * head_dim; i += kThreads) {
    const int r = i / head_dim, c = i % head_dim;
    const int row = row0 + r;
    dst[r][c] = row < n ? src[(int64_t(row) * heads + head) * head_dim + c] : 0.0f;
  }
}

__device__ float dot_rows(const float* a, const float* b, int head_dim) {
  float sum = 0;
  for (int c = 0; c < head_dim; ++c)
    sum = fmaf(a[c], b[c], sum);
  return sum;
}

__global__ void __launch_bounds__(kThreads) row_stats_kernel(AttentionBackwardParams p) {
  __shared__ float qs[kTile][kStride];
  __shared__ float dos[kTile][kStride];
  __shared__ float ks[kTile][kStride];
  __shared__ float vs[kTile][kStride];
  __shared__ float scores[kTile][kTile + 1];
  __shared__ float d_probs[kTile][kTile + 1];  // dP = dO . V of each (query, key)
  __shared__ float row_max[kTile];
  __shared__ float row_sum[kTile];
  __shared__ float row_dsum[kTile];  // sum_s exp(s - max) dP_s
  const int q0 = blockIdx.x * kTile, head = blockIdx.y, kv_head = head / (p.heads / p.kv_heads);
  const int qi = threadIdx.x / kTile, kj = threadIdx.x % kTile;
  load_tile(qs, p.q, q0, p.n, p.heads, head, p.head_dim);
  load_tile(dos, p.d_out, q0, p.n, p.heads, head, p.head_dim);
  if (threadIdx.x < kTile) {
    row_max[threadIdx.x] = -INFINITY;
    row_sum[threadIdx.x] = 0;
    row_dsum[threadIdx.x] = 0;
  }
  const int last_query = min(q0 + kTile, p.n) - 1;
  for (int k0 = 0; k0 <= last_query; k0 += kTile) {
    __syncthreads();  // the previous tile's scores and keys are consumed
    load_tile(ks, p.k, k0, p.n, p.kv_heads, kv_head, p.head_dim);
    load_tile(vs, p.v, k0, p.n, p.kv_heads, kv_head, p.head_dim);
    __syncthreads();
    const int query = q0 + qi, key = k0 + kj;
    const bool visible = query < p.n && key <= query;
    // The same dot products, in the same order, as attention_backward_kernel's S and dP.
    scores[qi][kj] = visible ? dot_rows(qs[qi], ks[kj], p.head_dim) * p.scale : -INFINITY;
    d_probs[qi][kj] = visible ? dot_rows(dos[qi], vs[kj], p.head_dim) : 0.0f;
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int r = threadIdx.x;
      float tile_max = -INFINITY;
      for (int j = 0; j < kTile; ++j)
        tile_max = fmaxf(tile_max, scores[r][j]);
      const float new_max = fmaxf(row_max[r], tile_max);
      if (new_max != -INFINITY) {
        const float rescale = row_max[r] == -INFINITY ? 0.0f : expf(row_max[r] - new_max);
        float sum = row_sum[r] * rescale, dsum = row_dsum[r] * rescale;
        for (int j = 0; j < kTile; ++j) {
          const float weight = expf(scores[r][j] - new_max);  // 0 for a masked key
          sum += weight;
          dsum = fmaf(weight, d_probs[r][j], dsum);
        }
        row_max[r] = new_max;
        row_sum[r] = sum;
        row_dsum[r] = dsum;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x < kTile && q0 + int(threadIdx.x) < p.n) {
    const int r = threadIdx.x;
    const int64_t index = int64_t(q0 + r) * p.heads + head;
    p.lse[index] = row_max[r] + logf(row_sum[r]);
    p.delta[index] = row_dsum[r] / row_sum[r];
  }
}

__global__ void __launch_bounds__(kThreads) attention_backward_kernel(AttentionBackwardParams p) {
  __shared__ float ks[kTile][kStride];
  __shared__ float vs[kTile][kStride];
  __shared__ float qs[kTile][kStride];
  __shared__ float dos[kTile][kStride];
  __shared__ float probs[kTile][kTile + 1];
  __shared__ float d_scores[kTile][kTile + 1];
  __shared__ float lse_s[kTile];
  __shared__ float delta_s[kTile];
  const int k0 = blockIdx.x * kTile, kv_head = blockIdx.y;
  const int group = p.heads / p.kv_heads;
  const int row = threadIdx.x / kTile, lane = threadIdx.x % kTile;  // (query or key row, column)
  load_tile(ks, p.k, k0, p.n, p.kv_heads, kv_head, p.head_dim);
  load_tile(vs, p.v, k0, p.n, p.kv_heads, kv_head, p.head_dim);
  float dk_acc[kColsPerThread] = {};
  float dv_acc[kColsPerThread] = {};
  for (int head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    for (int q0 = k0; q0 < p.n; q0 += kTile) {  // earlier queries see none of these keys
      __syncthreads();                          // the previous query tile is consumed
      load_tile(qs, p.q, q0, p.n, p.heads, head, p.head_dim);
      load_tile(dos, p.d_out, q0, p.n, p.heads, head, p.head_dim);
      if (threadIdx.x < kTile) {
        const int query = q0 + threadIdx.x;
        lse_s[threadIdx.x] = query < p.n ? p.lse[int64_t(query) * p.heads + head] : 0.0f;
        delta_s[threadIdx.x] = query < p.n ? p.delta[int64_t(query) * p.heads + head] : 0.0f;
      }
      __syncthreads();
      {  // thread (row = query, lane = key)
        const int query = q0 + row, key = k0 + lane;
        float prob = 0, d_score = 0;
        if (query < p.n && key <= query) {
          const float s = dot_rows(qs[row], ks[lane], p.head_dim) * p.scale;
          prob = expf(s - lse_s[row]);
          const float dp = dot_rows(dos[row], vs[lane], p.head_dim);
          d_score = prob * (dp - delta_s[row]) * p.scale;
        }
        probs[row][lane] = prob;
        d_scores[row][lane] = d_score;
      }
      __syncthreads();
#pragma unroll
      for (int m = 0; m < kColsPerThread; ++m) {  // thread (row = key, columns lane + 16 m)
        const int c = lane + kTile * m;
        if (c < p.head_dim) {
          float dv_sum = 0, dk_sum = 0;
          for (int i = 0; i < kTile; ++i) {
            dv_sum = fmaf(probs[i][row], dos[i][c], dv_sum);
            dk_sum = fmaf(d_scores[i][row], qs[i][c], dk_sum);
          }
          dv_acc[m] += dv_sum;
          dk_acc[m] += dk_sum;
        }
      }
      const int query = q0 + row;  // thread (row = query, columns lane + 16 m)
      if (query < p.n) {
        float* dq_row = p.dq + (int64_t(query) * p.heads + head) * p.head_dim;
#pragma unroll
        for (int m = 0; m < kColsPerThread; ++m) {
          const int c = lane + kTile * m;
          if (c < p.head_dim) {
            float sum = 0;
            for (int j = 0; j < kTile; ++j)
              sum = fmaf(d_scores[row][j], ks[j][c], sum);
            atomicAdd(dq_row + c, sum);
          }
        }
      }
    }
  }
  const int key = k0 + row;
  if (key < p.n) {
    const int64_t offset = (int64_t(key) * p.kv_heads + kv_head) * p.head_dim;
#pragma unroll
    for (int m = 0; m < kColsPerThread; ++m) {
      const int c = lane + kTile * m;
      if (c < p.head_dim) {
        p.dk[offset + c] = dk_acc[m];
        p.dv[offset + c] = dv_acc[m];
      }
    }
  }
}

}  // namespace

void attention_backward(CudaContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& d_out, Tensor& dq, Tensor& dk,
                        Tensor& dv) {
  const char* op = "attention_backward";
  require_attention_backward(q, k, v, d_out, dq, dk, dv, op);
  const int64_t n = q.dim(0), heads = q.dim(1), head_dim = q.dim(2), kv_heads = k.dim(1);
  require(head_dim >= 1 && head_dim <= kMaxHeadDim, op,
          "head_dim " + std::to_string(head_dim) + " is outside [1, 128]");
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, {n, heads * head_dim}, op, "out");
  if (n == 0) return;
  checked_int(q.numel(), op, "q elements");
  Tensor lse = ctx.empty(DType::F32, {n, heads}, op);
  Tensor delta = ctx.empty(DType::F32, {n, heads}, op);
  check_cuda(cudaMemsetAsync(dq.data(), 0, size_t(dq.nbytes()), ctx.stream()), op,
             "cudaMemsetAsync");
  const AttentionBackwardParams p{q.data_as<const float>(),
                                  k.data_as<const float>(),
                                  v.data_as<const float>(),
                                  d_out.data_as<const float>(),
                                  dq.data_as<float>(),
                                  dk.data_as<float>(),
                                  dv.data_as<float>(),
                                  lse.data_as<float>(),
                                  delta.data_as<float>(),
                                  int(n),
                                  int(heads),
                                  int(kv_heads),
                                  int(head_dim),
                                  float(1.0 / std::sqrt(double(head_dim)))};
  const unsigned tiles = unsigned((n + kTile - 1) / kTile);
  row_stats_kernel<<<dim3(tiles, unsigned(heads)), kThreads, 0, ctx.stream()>>>(p);
  check_launch(op, "row_stats_kernel");
  attention_backward_kernel<<<dim3(tiles, unsigned(kv_heads)), kThreads, 0, ctx.stream()>>>(p);
  check_launch(op, "attention_backward_kernel");
}

}  // namespace llamaq::cuda
