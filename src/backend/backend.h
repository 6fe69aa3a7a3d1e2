// The backend op interface: a narrow set of ops with one signature and one body per device (the
// CPU reference in backend/cpu, CUDA in backend/cuda). The model is written once against it and
// never branches on the backend. Tensors passed to ops live on the backend's device.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>

#include "core/tensor.h"
#include "model/linear_weight.h"

namespace llamaq {

// One layer's slice of the paged KV cache, as the attention ops see it.
struct KvLayerView {
  // [n_blocks, block_size, n_kv_heads, head_dim] f32, bf16, or on the CPU also f16 or i8 (q8).
  Tensor k_blocks;
  Tensor v_blocks;  // as k_blocks
  // [max_blocks] i32 shared by every token (one sequence), or [n, max_blocks] i32 with row t for
  // token t (a decode step of n sequences, one token each): entry i is the block holding
  // positions [i*bs, (i+1)*bs).
  Tensor block_table;
  int64_t block_size = 0;
  // q8 (i8 blocks): [n_blocks, block_size, n_kv_heads, head_dim / kv_q8_group(head_dim)] f32, the
  // scale of each group of values (value = int8 * scale); empty for the other dtypes.
  Tensor k_scales = {};
  Tensor v_scales = {};
};

// Values per scale of a q8 KV cache: 32 (as llama.cpp's q8_0), or the whole head when head_dim is
// not a multiple of 32.
inline int64_t kv_q8_group(int64_t head_dim) {
  return head_dim % 32 == 0 ? 32 : head_dim;
}

// A recorded sequence of ops that replays as one unit (a CUDA graph): the same kernels on the same
// tensors, with no per-op launch cost. Inputs change between replays only through the contents of
// the tensors the recorded ops read.
class OpGraph {
 public:
  virtual ~OpGraph() = default;
  virtual void replay() = 0;
};

// An opaque point in a backend's op order, for profiling (a CUDA event on the GPU).
class TimingMark {
 public:
  virtual ~TimingMark() = default;
};

// Device memory held by a backend's allocations (tensors, caches, scratch), in bytes.
struct MemoryStats {
  int64_t live = 0;           // in use now
  int64_t peak_live = 0;      // highest in use since the last reset
  int64_t peak_reserved = 0;  // highest held from the device, cached free blocks included
};

// One AdamW update of an f32 parameter, as torch's _single_tensor_adamw computes it:
//   p *= decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   p -= step_size * m / float(sqrt(double(v)) / bias_correction2_sqrt + eps).
struct AdamWUpdate {
  float step_size = 0;  // lr / (1 - beta1^t)
  float decay = 1;      // 1 - lr * weight_decay
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  double eps = 1e-8;
  double bias_correction2_sqrt = 1;  // sqrt(1 - beta2^t)
};

// How a GEMM writes its result c: c = alpha * product, plus the old c with `accumulate`.
struct GemmUpdate {
  float alpha = 1;
  bool accumulate = false;
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
  // The token-embedding table ([vocab, d]), of which each step reads only its tokens' rows: a
  // backend may keep it out of its own memory (the CUDA backend keeps it in pinned host memory
  // that its embedding kernel reads over the bus). The default is upload().
  virtual Tensor upload_embedding(const Tensor& host) { return upload(host); }

  // Records the ops `record` issues without running them. Every tensor allocated while recording
  // stays alive (and is never handed out again) for as long as the graph exists, so the graph may
  // keep using it. Backends without graphs return nullptr without calling `record`.
  virtual std::unique_ptr<OpGraph> capture(const std::function<void()>& record) {
    (void)record;
    return nullptr;
  }

  // Memory accounting of device backends; the CPU reports zeros (see the process's peak RSS).
  virtual MemoryStats memory_stats() const { return {}; }
  virtual void reset_peak_memory() {}

  // Profiling: a mark taken after every op queued so far, and the milliseconds between two marks
  // (waiting for them). The default is the host clock, right for backends whose ops finish before
  // they return (the CPU).
  virtual std::unique_ptr<TimingMark> timing_mark();
  virtual double elapsed_ms(const TimingMark& from, const TimingMark& to);

  // Ops. Activations are f32; weights bf16, f16 or f32.
  virtual void embedding(const Tensor& table,  // [vocab, d]
                         const Tensor& ids,    // [n] i32, each in [0, vocab)
                         Tensor& out) = 0;     // [n, d] f32

  virtual void rmsnorm(const Tensor& x,       // [n, d] f32
                       const Tensor& weight,  // [d]
                       float eps,
                       Tensor& out) = 0;  // [n, d] f32

  virtual void linear(const Tensor& x,        // [n, in] f32
                      const LinearWeight& w,  // [out, in]
                      Tensor& out) = 0;       // [n, out] f32: out = x w^T

  // Projections of one input (q, k and v): outs[i] = x ws[i]^T. A backend may run them as one
  // kernel (the CUDA backend does for NF4 decode); the default runs one linear per weight.
  virtual void linear_group(const Tensor& x,                          // [n, in] f32
                            std::span<const LinearWeight* const> ws,  // each [out_i, in]
                            std::span<Tensor* const> outs);           // each [n, out_i] f32

  // The MLP's first half: gate = silu(x wg^T) * (x wu^T). `up` is scratch of gate's shape (its
  // contents on return are unspecified). The default runs two linears and swiglu.
  virtual void linear_swiglu(const Tensor& x,         // [n, in] f32
                             const LinearWeight& wg,  // [f, in]
                             const LinearWeight& wu,  // [f, in]
                             Tensor& gate,            // [n, f] f32: the product on return
                             Tensor& up);             // [n, f] f32 scratch

  // residual += x w^T (a projection and the residual add after it). `scratch` [n, out] f32 may
  // hold the projection; the default runs linear into it and add_inplace.
  virtual void linear_add(const Tensor& x,        // [n, in] f32
                          const LinearWeight& w,  // [out, in]
                          Tensor& residual,       // [n, out] f32
                          Tensor& scratch);       // [n, out] f32

  // Rotates q or k in place with the HF rotate-half layout (specs §4.4).
  virtual void rope(Tensor& x,                    // [n, heads, head_dim] f32
                    const Tensor& positions,      // [n] i32
                    const Tensor& inv_freq) = 0;  // [head_dim / 2] f32

  // Writes the keys and values of n tokens at their positions in the sequence's blocks.
  virtual void kv_store(const Tensor& k,          // [n, n_kv_heads, head_dim] f32
                        const Tensor& v,          // [n, n_kv_heads, head_dim] f32
                        const Tensor& positions,  // [n] i32
                        const KvLayerView& kv) = 0;

  // rope(q), rope(k), then kv_store(k, v): the step before attention as one op (one kernel on
  // CUDA). The default runs the three ops.
  virtual void rope_kv_store(Tensor& q,                // [n, n_heads, head_dim] f32
                             Tensor& k,                // [n, n_kv_heads, head_dim] f32
                             const Tensor& v,          // [n, n_kv_heads, head_dim] f32
                             const Tensor& positions,  // [n] i32
                             const Tensor& inv_freq,   // [head_dim / 2] f32
                             const KvLayerView& kv);

  // Causal GQA attention: query i sees the cached keys at positions 0..positions[i].
  virtual void attention(const Tensor& q,          // [n, n_heads, head_dim] f32
                         const Tensor& positions,  // [n] i32
                         const KvLayerView& kv,
                         Tensor& out) = 0;  // [n, n_heads * head_dim] f32

  virtual void swiglu(const Tensor& gate,  // [n, f] f32
                      const Tensor& up,    // [n, f] f32
                      Tensor& out) = 0;    // [n, f] f32: silu(gate) * up

  virtual void add_inplace(Tensor& x,             // [n, d] f32
                           const Tensor& y) = 0;  // [n, d] f32: x += y

  // Greedy decoding without copying logits off the device: each row's largest value's index
  // (ties go to the lowest index; NaN never wins).
  virtual void argmax(const Tensor& logits,  // [rows, vocab] f32
                      Tensor& ids) = 0;      // [rows] i32

  // ---- Training: backward ops, loss and optimizer (the QLoRA trainer, src/train). ----
  // Each backward op mirrors a forward op; the CPU versions are the references of
  // backend/cpu/backward.h and backend/cpu/train_ops.h.

  // dx of y = w * x * rsqrt(mean(x^2) + eps).
  virtual void rmsnorm_backward(const Tensor& x,       // [n, d] f32 forward input
                                const Tensor& weight,  // [d]
                                float eps,
                                const Tensor& dy,  // [n, d] f32
                                Tensor& dx) = 0;   // [n, d] f32 (overwritten)

  // RoPE's gradient: the rotation by -theta, in place.
  virtual void rope_backward(Tensor& grad,                 // [n, heads, head_dim] f32
                             const Tensor& positions,      // [n] i32
                             const Tensor& inv_freq) = 0;  // [head_dim / 2] f32

  // Causal GQA attention of one contiguous sequence (key t is token t, positions 0..n-1).
  // `out` is the forward output, checked for shape but not read: both backends compute
  // delta = sum_s P_s dP_s from their own fp32 P and dP rather than FlashAttention-2's
  // rowsum(dO * O), which would carry the bf16 rounding of a tensor-core forward into
  // dP - delta.
  virtual void attention_backward(const Tensor& q,      // [n, H, D] f32 (after RoPE)
                                  const Tensor& k,      // [n, Hkv, D] f32 (after RoPE)
                                  const Tensor& v,      // [n, Hkv, D] f32
                                  const Tensor& out,    // [n, H * D] f32 forward output
                                  const Tensor& d_out,  // [n, H * D] f32
                                  Tensor& dq,           // [n, H, D] f32 (overwritten)
                                  Tensor& dk,           // [n, Hkv, D] f32 (overwritten)
                                  Tensor& dv) = 0;      // [n, Hkv, D] f32 (overwritten)

  virtual void swiglu_backward(const Tensor& gate,  // [n, f] f32
                               const Tensor& up,    // [n, f] f32
                               const Tensor& ds,    // [n, f] f32
                               Tensor& d_gate,      // [n, f] f32 (overwritten)
                               Tensor& d_up) = 0;   // [n, f] f32 (overwritten)

  // dx = dy W (dx += dy W with `accumulate`) for y = x W^T; W dense or NF4 (dequantized a slice
  // at a time, never the model).
  virtual void linear_backward_input(const Tensor& dy,       // [n, out] f32
                                     const LinearWeight& w,  // [out, in] (LoRA ignored)
                                     Tensor& dx,             // [n, in] f32
                                     bool accumulate) = 0;

  // The f32 products of the LoRA branch, c = alpha * product (+ c with `accumulate`): the scaling
  // and the sum into the base projection ride on the GEMM rather than separate passes.
  // c (+)= alpha a^T b (the LoRA weight gradients).
  virtual void matmul_tn(const Tensor& a,  // [n, p] f32
                         const Tensor& b,  // [n, q] f32
                         Tensor& c,        // [p, q] f32
                         const GemmUpdate& update) = 0;
  // c (+)= alpha a b.
  virtual void matmul_nn(const Tensor& a,  // [n, p] f32
                         const Tensor& b,  // [p, q] f32
                         Tensor& c,        // [n, q] f32
                         const GemmUpdate& update) = 0;
  // c (+)= alpha a b^T (x A^T and the scaled (x A^T) B^T added to a projection's output).
  virtual void matmul_nt(const Tensor& a,  // [n, p] f32
                         const Tensor& b,  // [q, p] f32
                         Tensor& c,        // [n, q] f32
                         const GemmUpdate& update) = 0;

  virtual void scale(const Tensor& x,  // [...] f32
                     float s,
                     Tensor& out) = 0;     // [...] f32: out = s * x (may alias x)
  virtual void multiply(const Tensor& x,   // [...] f32
                        const Tensor& y,   // [...] f32
                        Tensor& out) = 0;  // [...] f32: out = x * y (may alias x)
  virtual void zero(Tensor& x) = 0;        // any dtype: all bytes 0

  // LoRA dropout mask: mask[i] = mix64(base + i) < threshold ? keep_scale : 0 (backend/mix64.h),
  // so every backend and every recomputation draws the same mask.
  virtual void dropout_mask(uint64_t base, uint64_t threshold, float keep_scale,
                            Tensor& mask) = 0;  // [...] f32

  // Cross-entropy of rows of logits against targets (kIgnore = -100 rows give 0 and a zero
  // gradient; other targets must be in [0, vocab), checked by the caller). Overwrites the logits
  // with d(sum(CE) / normalizer)/d(logits).
  virtual void cross_entropy(Tensor& logits,         // [rows, vocab] f32, gradient out
                             const Tensor& targets,  // [rows] i32
                             double normalizer,
                             Tensor& losses) = 0;  // [rows] f64: CE of each row

  // sum over all tensors of sum(x^2), accumulated in double (waits for the device).
  virtual double sum_of_squares(std::span<const Tensor> xs) = 0;  // each [...] f32

  virtual void adamw_step(Tensor& param,       // [...] f32
                          const Tensor& grad,  // [...] f32
                          Tensor& exp_avg,     // [...] f32
                          Tensor& exp_avg_sq,  // [...] f32
                          const AdamWUpdate& update) = 0;

  // Waits for all queued work (step timing); a no-op on the CPU.
  virtual void synchronize() = 0;
};

// The CPU backend with n_threads threads (<= 0: all hardware threads), at the fastest instruction
// set this CPU supports (backend/cpu/cpu_backend.h picks another, the fp32 reference included).
std::unique_ptr<Backend> make_cpu_backend(int n_threads);

}  // namespace llamaq
