// The CPU reference ops: plain, readable fp32 code that is the specification every other
// backend is tested against. Parallel over rows with the thread pool; no other tricks.
#pragma once

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace llamaq::cpu {

// Widens `n` elements of a bf16/f16/f32 row to f32.
void load_row_f32(const Tensor& matrix, int64_t row, float* out);

// Dot product of two f32 vectors with eight running sums (vectorizes without -ffast-math).
float dot_f32(const float* a, const float* b, int64_t n);

void embedding(ThreadPool& pool, const Tensor& table, const Tensor& ids, Tensor& out);
void rmsnorm(ThreadPool& pool, const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void linear(ThreadPool& pool, const Tensor& x, const LinearWeight& w, Tensor& out);
// Fails naming the shapes unless x is [n, in] and out [n, out] for w [out, in] (both linears).
void check_linear_shapes(const Tensor& x, const LinearWeight& w, const Tensor& out);
void rope(ThreadPool& pool, Tensor& x, const Tensor& positions, const Tensor& inv_freq);
// KV caches the CPU ops read and write: f32, bf16 or f16 (kv_store rounds to nearest even), or i8
// with group scales (q8, kv_q8.h).
inline bool kv_dtype_supported(DType dtype) {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::I8;
}
// Fails naming the dtype unless keys and values are one supported dtype (and a q8 cache has its
// scales).
void check_kv_dtype(const KvLayerView& kv);
void kv_store(const Tensor& k, const Tensor& v, const Tensor& positions, const KvLayerView& kv);
void attention(ThreadPool& pool, const Tensor& q, const Tensor& positions, const KvLayerView& kv,
               Tensor& out);
void swiglu(ThreadPool& pool, const Tensor& gate, const Tensor& up, Tensor& out);
void add_inplace(ThreadPool& pool, Tensor& x, const Tensor& y);
void argmax(const Tensor& logits, Tensor& ids);

}  // namespace llamaq::cpu
