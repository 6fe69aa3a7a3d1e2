// Precondition checks shared by the op entries: device, dtype, rank and shape of every tensor an
// op receives, failing with a message that names the op and the tensor. fmt-free for .cu files.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "backend/backend.h"
#include "backend/cuda/cuda_check.h"
#include "core/tensor.h"

namespace llamaq::cuda {

inline void require(bool condition, const char* op, const std::string& message) {
  if (!condition) fail_op(op, message);
}

inline void require_on_device(const Tensor& t, const char* op, const char* name) {
  require(t.device() == Device::Cuda, op, std::string(name) + " is not a CUDA tensor");
  require(t.data() != nullptr || t.numel() == 0, op, std::string(name) + " has no data");
}

inline void require_tensor(const Tensor& t, DType dtype, int rank, const char* op,
                           const char* name) {
  require_on_device(t, op, name);
  require(t.dtype() == dtype, op,
          std::string(name) + " must be " + std::string(dtype_name(dtype)) + ", got " +
              std::string(dtype_name(t.dtype())));
  require(t.rank() == rank, op,
          std::string(name) + " must have rank " + std::to_string(rank) + ", got shape " +
              shape_to_string(t.shape()));
}

inline void require_shape(const Tensor& t, const Shape& shape, const char* op, const char* name) {
  require(t.shape() == shape, op,
          std::string(name) + " has shape " + shape_to_string(t.shape()) + ", expected " +
              shape_to_string(shape));
}

inline bool is_float_weight(DType dtype) {
  return dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32;
}

// Kernel index arithmetic is 32-bit where a dimension allows it.
inline int checked_int(int64_t value, const char* op, const char* what) {
  require(value >= 0 && value <= std::numeric_limits<int32_t>::max(), op,
          std::string(what) + " = " + std::to_string(value) + " does not fit 32-bit indexing");
  return int(value);
}

inline unsigned grid_size(int64_t work, int block, int64_t max_blocks = 65535LL * 16) {
  const int64_t blocks = (work + block - 1) / block;
  return unsigned(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

// The positions of n tokens and a KV layer view: dtypes, ranks and matching K/V block pools (both
// f32 or both bf16).
inline void require_positions_and_kv(const Tensor& positions, int64_t n, const KvLayerView& kv,
                                     const char* op) {
  require_tensor(positions, DType::I32, 1, op, "positions");
  require_shape(positions, {n}, op, "positions");
  const DType cache = kv.k_blocks.dtype();
  require(cache == DType::F32 || cache == DType::BF16, op,
          "the KV blocks must be f32 or bf16, got " + std::string(dtype_name(cache)));
  require_tensor(kv.k_blocks, cache, 4, op, "k_blocks");
  require_tensor(kv.v_blocks, cache, 4, op, "v_blocks");
  require_shape(kv.v_blocks, kv.k_blocks.shape(), op, "v_blocks");
  require(kv.block_table.dtype() == DType::I32 &&
              (kv.block_table.rank() == 1 ||
               (kv.block_table.rank() == 2 && kv.block_table.dim(0) == n)),
          op, "block_table must be i32 [max_blocks] or [n, max_blocks] (one row per token)");
  require_on_device(kv.block_table, op, "block_table");
}

// k [n, n_kv_heads, head_dim] must fit the cache's blocks [n_blocks, block_size, n_kv_heads,
// head_dim].
inline void require_kv_fits(const Tensor& k, const KvLayerView& kv, const char* op) {
  require(kv.k_blocks.dim(1) == kv.block_size && kv.k_blocks.dim(2) == k.dim(1) &&
              kv.k_blocks.dim(3) == k.dim(2),
          op,
          "k " + shape_to_string(k.shape()) + " does not fit the blocks " +
              shape_to_string(kv.k_blocks.shape()));
}

// The tensors of an attention backward: q [n, H, D], k and v [n, Hkv, D] with H a multiple of
// Hkv, d_out [n, H * D], and gradients of their inputs' shapes (all f32 on the device).
inline void require_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& d_out, const Tensor& dq, const Tensor& dk,
                                       const Tensor& dv, const char* op) {
  require_tensor(q, DType::F32, 3, op, "q");
  require_tensor(k, DType::F32, 3, op, "k");
  require_tensor(v, DType::F32, 3, op, "v");
  const int64_t n = q.dim(0), heads = q.dim(1), head_dim = q.dim(2), kv_heads = k.dim(1);
  require(k.dim(0) == n && k.dim(2) == head_dim, op,
          "k " + shape_to_string(k.shape()) + " does not fit q " + shape_to_string(q.shape()));
  require_shape(v, k.shape(), op, "v");
  require(kv_heads > 0 && heads % kv_heads == 0, op,
          std::to_string(heads) + " query heads are not a multiple of " + std::to_string(kv_heads) +
              " KV heads");
  require_tensor(d_out, DType::F32, 2, op, "d_out");
  require_shape(d_out, {n, heads * head_dim}, op, "d_out");
  require_tensor(dq, DType::F32, 3, op, "dq");
  require_shape(dq, q.shape(), op, "dq");
  require_tensor(dk, DType::F32, 3, op, "dk");
  require_shape(dk, k.shape(), op, "dk");
  require_tensor(dv, DType::F32, 3, op, "dv");
  require_shape(dv, k.shape(), op, "dv");
}

}  // namespace llamaq::cuda
