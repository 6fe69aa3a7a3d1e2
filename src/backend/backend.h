// The backend op interface: a narrow set of ops with one signature and one body per device (the
// CPU reference in backend/cpu, CUDA in backend/cuda). The model is written once against it and
// never branches on the backend. Tensors passed to ops live on the backend's device.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "core/tensor.h"
#include "model/linear_weight.h"

namespace llamaq {

// One layer's slice of the paged KV cache, as the attention ops see it.
struct KvLayerView {
  Tensor k_blocks;     // [n_blocks, block_size, n_kv_heads, head_dim] f32 or bf16
  Tensor v_blocks;     // [n_blocks, block_size, n_kv_heads, head_dim] f32 or bf16 (as k_blocks)
  Tensor block_table;  // [max_blocks_per_sequence] i32: block holding positions [i*bs, (i+1)*bs)
  int64_t block_size = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  virtual Device device() const = 0;
  // The KV cache dtype this backend runs fastest with (F32 or BF16); KvCache's default.
  virtual DType preferred_kv_dtype() const = 0;

  // Memory.
  virtual Tensor alloc(DType dtype, Shape shape) = 0;  // zero-filled
  // A weight for this backend: the CPU backend uses host tensors (memory-mapped) as they are.
  virtual Tensor upload(const Tensor& host) = 0;
  virtual void copy_from_host(Tensor& dst, const void* src) = 0;  // dst.nbytes() bytes
  virtual void copy_to_host(const Tensor& src, void* dst) = 0;    // src.nbytes() bytes
  // A projection weight for this backend: dense weights go through upload(); a backend that
  // runs NF4 kernels copies the quantized tensors too (the CPU backend returns `host` as is).
  virtual LinearWeight upload_linear(const LinearWeight& host) = 0;

  // Ops. Activations are f32; weights bf16, f16 or f32.
  virtual void embedding(const Tensor& table,  // [vocab, d]
                         const Tensor& ids,    // [n] i32, each in [0, vocab)
                         Tensor& out) = 0;     // [n, d] f32

  virtual void rmsnorm(const Tensor& x,       // [n, d] f32
                       const Tensor& weight,  // [d]
                       float eps,
                       Tensor& out) = 0;      // [n, d] f32

  virtual void linear(const Tensor& x,           // [n, in] f32
                      const LinearWeight& w,     // [out, in]
                      Tensor& out) = 0;          // [n, out] f32: out = x w^T

  // Rotates q or k in place with the HF rotate-half layout (specs §4.4).
  virtual void rope(Tensor& x,                 // [n, heads, head_dim] f32
                    const Tensor& positions,   // [n] i32
                    const Tensor& inv_freq) = 0;  // [head_dim / 2] f32

  // Writes the keys and values of n tokens at their positions in the sequence's blocks.
  virtual void kv_store(const Tensor& k,          // [n, n_kv_heads, head_dim] f32
                        const Tensor& v,          // [n, n_kv_heads, head_dim] f32
                        const Tensor& positions,  // [n] i32
                        const KvLayerView& kv) = 0;

  // Causal GQA attention: query i sees the cached keys at positions 0..positions[i].
  virtual void attention(const Tensor& q,          // [n, n_heads, head_dim] f32
                         const Tensor& positions,  // [n] i32
                         const KvLayerView& kv,
                         Tensor& out) = 0;         // [n, n_heads * head_dim] f32

  virtual void swiglu(const Tensor& gate,  // [n, f] f32
                      const Tensor& up,    // [n, f] f32
                      Tensor& out) = 0;    // [n, f] f32: silu(gate) * up

  virtual void add_inplace(Tensor& x,            // [n, d] f32
                           const Tensor& y) = 0;  // [n, d] f32: x += y
};

// The CPU backend with n_threads threads (<= 0: all hardware threads), at the fastest instruction
// set this CPU supports (backend/cpu/cpu_backend.h picks another, the fp32 reference included).
std::unique_ptr<Backend> make_cpu_backend(int n_threads);

}  // namespace llamaq
