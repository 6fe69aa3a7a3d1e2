// RoPE, HF rotate-half layout: pairs (j, j + head_dim/2) of every head are rotated by
// angle = float(pos) * inv_freq[j] (fp32, as HF and the CPU compute it), with cos and sin taken in
// double and rounded to fp32. One block per token: the block computes its cos/sin table once in
// shared memory, then rotates every head. Products and sums are rounded one by one (no FMA
// contraction), so the result is bit-identical to the CPU reference.
//
// rope_kv_store rotates q and k and writes k and v into the paged KV cache in the same kernel
// (what rope, rope and kv_store do one after another): one launch instead of three per layer. The
// cache is f32 or bf16.
//
// rope_backward rotates by -angle (the gradient of a rotation is the inverse rotation): the same
// kernel with the sine table negated, which rounds exactly as the CPU's backward (a*c + b*s is
// a*c - b*(-s) bit for bit).
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

struct RopeParams {
  float* x;                  // [n, heads, head_dim] f32, rotated in place (or its gradient)
  const int32_t* positions;  // [n] i32
  const float* inv_freq;     // [head_dim / 2] f32
  int heads;
  int half;  // head_dim / 2
};

// The block's cos/sin table for position `pos` (shared memory), then a barrier.
template <bool kInverse>
__device__ void fill_table(float pos, const float* inv_freq, int half, float* cos_v, float* sin_v) {
  for (int j = threadIdx.x; j < half; j += kThreads) {
    double s, c;
    sincos(double(__fmul_rn(pos, inv_freq[j])), &s, &c);
    cos_v[j] = float(c);
    sin_v[j] = kInverse ? -float(s) : float(s);
  }
  __syncthreads();
}

// Rotates pair (j, j + half) of one head in place; returns the rotated pair.
__device__ __forceinline__ float2 rotate_pair(float* head, int j, int half, const float* cos_v,
                                              const float* sin_v) {
  const float a = head[j];
  const float b = head[j + half];
  const float2 r = make_float2(__fsub_rn(__fmul_rn(a, cos_v[j]), __fmul_rn(b, sin_v[j])),
                               __fadd_rn(__fmul_rn(b, cos_v[j]), __fmul_rn(a, sin_v[j])));
  head[j] = r.x;
  head[j + half] = r.y;
  return r;
}

template <bool kInverse>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p) {
  allow_dependents_to_launch();
  extern __shared__ float table[];  // cos [half], then sin [half]
  float* cos_v = table;
  float* sin_v = table + p.half;
  const int64_t t = blockIdx.x;
  fill_table<kInverse>(float(p.positions[t]), p.inv_freq, p.half, cos_v, sin_v);
  const int head_dim = 2 * p.half;
  float* token = p.x + t * p.heads * head_dim;
  for (int i = threadIdx.x; i < p.heads * p.half; i += kThreads) {
    rotate_pair(token + (i / p.half) * head_dim, i % p.half, p.half, cos_v, sin_v);
  }
}

template <typename T>
struct RopeStoreParams {
  float* q;                    // [n, q_heads, head_dim] f32, rotated in place
  float* k;                    // [n, kv_heads, head_dim] f32, rotated in place
  const float* v;              // [n, kv_heads, head_dim] f32
  const int32_t* positions;    // [n] i32
  const float* inv_freq;       // [head_dim / 2] f32
  const int32_t* block_table;  // [max_blocks] i32, or [n, table_stride] i32 (row t: token t)
  int64_t table_stride;        // 0: one table for every token
  T* k_blocks;                 // [n_blocks, block_size, kv_heads, head_dim] f32 or bf16
  T* v_blocks;                 // [n_blocks, block_size, kv_heads, head_dim] f32 or bf16
  int q_heads;
  int kv_heads;
  int half;  // head_dim / 2
  int block_size;
};

// Block (x = token, y = a group of kHeadsPerBlock heads of q, then of k/v): each block builds the
// token's cos/sin table, then rotates its q heads, or rotates its k heads into the cache and
// copies their v rows (as kv_store_kernel does). Several blocks per token keep a one-token decode
// step from running on a single multiprocessor.
constexpr int kHeadsPerBlock = 4;

template <typename T>
__global__ void __launch_bounds__(kThreads) rope_kv_store_kernel(RopeStoreParams<T> p) {
  allow_dependents_to_launch();
  extern __shared__ float table[];  // cos [half], then sin [half]
  float* cos_v = table;
  float* sin_v = table + p.half;
  const int64_t t = blockIdx.x;
  const int pos = p.positions[t];
  fill_table<false>(float(pos), p.inv_freq, p.half, cos_v, sin_v);
  const int head_dim = 2 * p.half;
  const int q_blocks = (p.q_heads + kHeadsPerBlock - 1) / kHeadsPerBlock;
  const bool is_q = int(blockIdx.y) < q_blocks;
  const int first = (is_q ? int(blockIdx.y) : int(blockIdx.y) - q_blocks) * kHeadsPerBlock;
  const int heads = min(kHeadsPerBlock, (is_q ? p.q_heads : p.kv_heads) - first);
  if (is_q) {
    float* q = p.q + (t * p.q_heads + first) * head_dim;
    for (int i = threadIdx.x; i < heads * p.half; i += kThreads) {
      rotate_pair(q + (i / p.half) * head_dim, i % p.half, p.half, cos_v, sin_v);
    }
    return;
  }
  const int64_t row = int64_t(p.kv_heads) * head_dim;
  const int32_t* table_t = p.block_table + t * p.table_stride;
  const int64_t slot = int64_t(table_t[pos / p.block_size]) * p.block_size + pos % p.block_size;
  float* k = p.k + t * row + int64_t(first) * head_dim;
  T* k_cached = p.k_blocks + slot * row + int64_t(first) * head_dim;
  for (int i = threadIdx.x; i < heads * p.half; i += kThreads) {
    const int h = i / p.half, j = i % p.half;
    const float2 r = rotate_pair(k + h * head_dim, j, p.half, cos_v, sin_v);
    store_as(k_cached + h * head_dim + j, r.x);
    store_as(k_cached + h * head_dim + j + p.half, r.y);
  }
  const int64_t begin = int64_t(first) * head_dim, end = begin + int64_t(heads) * head_dim;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    store_as(p.v_blocks + slot * row + i, p.v[t * row + i]);
}

// Rotates x by +angle, or by -angle when `inverse`; `op` names the caller in errors.
void rotate(CudaContext& ctx, Tensor& x, const Tensor& positions, const Tensor& inv_freq,
            bool inverse, const char* op) {
  require_tensor(x, DType::F32, 3, op, inverse ? "grad" : "x");
  const int64_t n = x.dim(0);
  require(x.dim(2) % 2 == 0, op, "head_dim must be even");
  require_tensor(positions, DType::I32, 1, op, "positions");
  require_shape(positions, {n}, op, "positions");
  require_tensor(inv_freq, DType::F32, 1, op, "inv_freq");
  require_shape(inv_freq, {x.dim(2) / 2}, op, "inv_freq");
  require(x.dim(2) / 2 <= 4096, op, "head_dim above 8192 is not supported");
  if (x.numel() == 0) return;
  checked_int(x.numel(), op, "elements");
  const RopeParams p{x.data_as<float>(), positions.data_as<const int32_t>(),
                     inv_freq.data_as<const float>(), int(x.dim(1)), int(x.dim(2) / 2)};
  const size_t shared = 2 * size_t(p.half) * sizeof(float);
  if (inverse) {
    rope_kernel<true><<<unsigned(n), kThreads, shared, ctx.stream()>>>(p);
  } else {
    rope_kernel<false><<<unsigned(n), kThreads, shared, ctx.stream()>>>(p);
  }
  check_launch(op, "rope_kernel");
}

template <typename T>
void launch_rope_kv_store(CudaContext& ctx, Tensor& q, Tensor& k, const Tensor& v,
                          const Tensor& positions, const Tensor& inv_freq, const KvLayerView& kv) {
  const RopeStoreParams<T> p{q.data_as<float>(),
                             k.data_as<float>(),
                             v.data_as<const float>(),
                             positions.data_as<const int32_t>(),
                             inv_freq.data_as<const float>(),
                             kv.block_table.data_as<const int32_t>(),
                             kv.block_table.rank() == 2 ? kv.block_table.dim(1) : 0,
                             kv.k_blocks.data_as<T>(),
                             kv.v_blocks.data_as<T>(),
                             int(q.dim(1)),
                             int(k.dim(1)),
                             int(k.dim(2) / 2),
                             int(kv.block_size)};
  const size_t shared = 2 * size_t(p.half) * sizeof(float);
  const unsigned head_blocks = unsigned((p.q_heads + kHeadsPerBlock - 1) / kHeadsPerBlock +
                                        (p.kv_heads + kHeadsPerBlock - 1) / kHeadsPerBlock);
  rope_kv_store_kernel<T>
      <<<dim3(unsigned(k.dim(0)), head_blocks), kThreads, shared, ctx.stream()>>>(p);
  check_launch("rope_kv_store", "rope_kv_store_kernel");
}

}  // namespace

void rope(CudaContext& ctx, Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  rotate(ctx, x, positions, inv_freq, /*inverse=*/false, "rope");
}

void rope_backward(CudaContext& ctx, Tensor& grad, const Tensor& positions,
                   const Tensor& inv_freq) {
  rotate(ctx, grad, positions, inv_freq, /*inverse=*/true, "rope_backward");
}

void rope_kv_store(CudaContext& ctx, Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                   const Tensor& inv_freq, const KvLayerView& kv) {
  const char* op = "rope_kv_store";
  require_tensor(q, DType::F32, 3, op, "q");
  require_tensor(k, DType::F32, 3, op, "k");
  require_tensor(v, DType::F32, 3, op, "v");
  require_shape(v, k.shape(), op, "v");
  const int64_t n = k.dim(0);
  require(q.dim(0) == n && q.dim(2) == k.dim(2), op,
          "q " + shape_to_string(q.shape()) + " does not fit k " + shape_to_string(k.shape()));
  require(k.dim(2) % 2 == 0 && k.dim(2) / 2 <= 4096, op, "head_dim must be even, at most 8192");
  require_tensor(inv_freq, DType::F32, 1, op, "inv_freq");
  require_shape(inv_freq, {k.dim(2) / 2}, op, "inv_freq");
  require_positions_and_kv(positions, n, kv, op);
  require_kv_fits(k, kv, op);
  if (n == 0) return;
  checked_int(q.numel(), op, "q elements");
  checked_int(kv.block_size, op, "block_size");
  if (kv.k_blocks.dtype() == DType::BF16) {
    launch_rope_kv_store<__nv_bfloat16>(ctx, q, k, v, positions, inv_freq, kv);
  } else {
    launch_rope_kv_store<float>(ctx, q, k, v, positions, inv_freq, kv);
  }
}

}  // namespace llamaq::cuda
