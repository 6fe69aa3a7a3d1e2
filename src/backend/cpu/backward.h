// CPU reference backward ops for training (fp32, readable; checked by finite differences and by
// PEFT's gradients). Each mirrors a forward op of cpu_ops.h. The CUDA versions will join the
// backend interface when the GPU trainer lands; until then training runs on these.
#pragma once

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace llamaq::cpu {

// y = w * x * rsqrt(mean(x^2) + eps): dx from dy.
void rmsnorm_backward(ThreadPool& pool,
                      const Tensor& x,       // [n, d] f32 forward input
                      const Tensor& weight,  // [d]
                      float eps,
                      const Tensor& dy,  // [n, d] f32
                      Tensor& dx);       // [n, d] f32 (overwritten)

// RoPE is a rotation by theta: its gradient rotates back by -theta, in place.
void rope_backward(ThreadPool& pool,
                   Tensor& grad,             // [n, heads, head_dim] f32, d(out) in, d(in) out
                   const Tensor& positions,  // [n] i32
                   const Tensor& inv_freq);  // [head_dim / 2] f32

// Causal GQA attention of one sequence whose n tokens sit at positions 0..n-1 (key t is token t).
void attention_backward(ThreadPool& pool,
                        const Tensor& q,      // [n, H, D] f32 (after RoPE)
                        const Tensor& k,      // [n, Hkv, D] f32 (after RoPE)
                        const Tensor& v,      // [n, Hkv, D] f32
                        const Tensor& d_out,  // [n, H * D] f32
                        Tensor& dq,           // [n, H, D] f32 (overwritten)
                        Tensor& dk,           // [n, Hkv, D] f32 (overwritten)
                        Tensor& dv);          // [n, Hkv, D] f32 (overwritten)

// s = silu(g) * u.
void swiglu_backward(ThreadPool& pool,
                     const Tensor& gate,  // [n, f] f32
                     const Tensor& up,    // [n, f] f32
                     const Tensor& ds,    // [n, f] f32
                     Tensor& d_gate,      // [n, f] f32 (overwritten)
                     Tensor& d_up);       // [n, f] f32 (overwritten)

// dx = dy W (dx += dy W with `accumulate`) for y = x W^T, W dense or NF4 (dequantized a few rows
// at a time, never whole).
void linear_backward_input(ThreadPool& pool,
                           const Tensor& dy,       // [n, out] f32
                           const LinearWeight& w,  // [out, in] base weight (LoRA ignored)
                           Tensor& dx,             // [n, in] f32
                           bool accumulate);

// The LoRA products, all f32 and row-major, c = alpha * product (+ c with update.accumulate):
// c (+)= alpha a^T b (weight gradients).
void matmul_tn(ThreadPool& pool,
               const Tensor& a,  // [n, p] f32
               const Tensor& b,  // [n, q] f32
               Tensor& c,        // [p, q] f32
               const GemmUpdate& update);
// c (+)= alpha a b.
void matmul_nn(ThreadPool& pool,
               const Tensor& a,  // [n, p] f32
               const Tensor& b,  // [p, q] f32
               Tensor& c,        // [n, q] f32
               const GemmUpdate& update);
// c (+)= alpha a b^T.
void matmul_nt(ThreadPool& pool,
               const Tensor& a,  // [n, p] f32
               const Tensor& b,  // [q, p] f32
               Tensor& c,        // [n, q] f32
               const GemmUpdate& update);

}  // namespace llamaq::cpu
