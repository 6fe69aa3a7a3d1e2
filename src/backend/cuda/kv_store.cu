// kv_store: copies the keys and values of n tokens into the paged KV cache, token t going to
// slot table[pos / block_size] * block_size + pos % block_size of the layer's block pool (f32, or
// bf16 rounded to nearest even).
#include "backend/cuda/device_math.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct KvStoreParams {
  const float* k;              // [n, n_kv_heads, head_dim] f32
  const float* v;              // [n, n_kv_heads, head_dim] f32
  const int32_t* positions;    // [n] i32
  const int32_t* block_table;  // [max_blocks] i32, or [n, table_stride] i32 (row t: token t)
  int64_t table_stride;        // 0: one table for every token
  T* k_blocks;                 // [n_blocks, block_size, n_kv_heads, head_dim] f32 or bf16
  T* v_blocks;                 // [n_blocks, block_size, n_kv_heads, head_dim] f32 or bf16
  int64_t row;                 // n_kv_heads * head_dim
  int block_size;
};

// Block (x = token, y = chunk of the row).
template <typename T>
__global__ void kv_store_kernel(KvStoreParams<T> p) {
  allow_dependents_to_launch();
  const int64_t t = blockIdx.x;
  const int pos = p.positions[t];
  const int32_t* table = p.block_table + t * p.table_stride;
  const int64_t slot = int64_t(table[pos / p.block_size]) * p.block_size + pos % p.block_size;
  for (int64_t i = blockIdx.y * int64_t(kThreads) + threadIdx.x; i < p.row;
       i += int64_t(gridDim.y) * kThreads) {
    store_as(p.k_blocks + slot * p.row + i, p.k[t * p.row + i]);
    store_as(p.v_blocks + slot * p.row + i, p.v[t * p.row + i]);
  }
}

template <typename T>
void launch_kv_store(CudaContext& ctx, const Tensor& k, const Tensor& v, const Tensor& positions,
                     const KvLayerView& kv) {
  const KvStoreParams<T> p{k.data_as<const float>(),
                           v.data_as<const float>(),
                           positions.data_as<const int32_t>(),
                           kv.block_table.data_as<const int32_t>(),
                           kv.block_table.rank() == 2 ? kv.block_table.dim(1) : 0,
                           kv.k_blocks.data_as<T>(),
                           kv.v_blocks.data_as<T>(),
                           k.dim(1) * k.dim(2),
                           int(kv.block_size)};
  const dim3 grid(unsigned(k.dim(0)), grid_size(p.row, kThreads, 64));
  kv_store_kernel<T><<<grid, kThreads, 0, ctx.stream()>>>(p);
  check_launch("kv_store", "kv_store_kernel");
}

}  // namespace

void kv_store(CudaContext& ctx, const Tensor& k, const Tensor& v, const Tensor& positions,
              const KvLayerView& kv) {
  const char* op = "kv_store";
  require_tensor(k, DType::F32, 3, op, "k");
  require_tensor(v, DType::F32, 3, op, "v");
  require_shape(v, k.shape(), op, "v");
  const int64_t n = k.dim(0);
  require_positions_and_kv(positions, n, kv, op);
  require_kv_fits(k, kv, op);
  if (n == 0) return;
  checked_int(n, op, "tokens");
  checked_int(kv.block_size, op, "block_size");
  if (kv.k_blocks.dtype() == DType::BF16) {
    launch_kv_store<__nv_bfloat16>(ctx, k, v, positions, kv);
  } else {
    launch_kv_store<float>(ctx, k, v, positions, kv);
  }
}

}  // namespace llamaq::cuda
