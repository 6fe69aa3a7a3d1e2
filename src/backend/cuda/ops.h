// The CUDA op entries behind CudaBackend: each unpacks and checks its tensors, then calls the
// launcher of its kernel family (one .cu file per family). All work is queued on ctx.stream().
// Several ops expose their alternative paths (flash vs split-KV attention, fused NF4 GEMV vs
// dequantize + GEMM) so that the GPU tests can check each path against the CPU at every size.
#pragma once

#include <span>

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"

namespace llamaq::cuda {

void embedding(CudaContext& ctx, const Tensor& table, const Tensor& ids, Tensor& out);
void rmsnorm(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void rope(CudaContext& ctx, Tensor& x, const Tensor& positions, const Tensor& inv_freq);
// rope(q), rope(k) and kv_store(k, v) in one kernel (f32 or bf16 cache).
void rope_kv_store(CudaContext& ctx, Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions,
                   const Tensor& inv_freq, const KvLayerView& kv);
void swiglu(CudaContext& ctx, const Tensor& gate, const Tensor& up, Tensor& out);
void add_inplace(CudaContext& ctx, Tensor& x, const Tensor& y);
void argmax(CudaContext& ctx, const Tensor& logits, Tensor& ids);
void kv_store(CudaContext& ctx, const Tensor& k, const Tensor& v, const Tensor& positions,
              const KvLayerView& kv);

// f32 activations -> a bf16 or f16 copy (the GEMM operand); same shape.
void convert_activations(CudaContext& ctx, const Tensor& x, Tensor& out, const char* op);

// Auto: SplitKv for decode (n <= 4), Flash otherwise. Flash: the tensor-core kernel (head dims
// 64, 128; FlashFp32 for others). FlashFp32: the fp32 CUDA-core kernel. Naive: materialized
// scores through cuBLAS (attention_naive.cu).
enum class AttentionPath { Auto, Flash, SplitKv, FlashFp32, Naive };
void attention(CudaContext& ctx, const Tensor& q, const Tensor& positions, const KvLayerView& kv,
               Tensor& out, AttentionPath path = AttentionPath::Auto);

// Dense matrix-vector kernel for 1..kDenseGemvMaxTokens tokens with bf16/f16 weights (decode);
// f32 activations used as they are. linear_dense picks it when supported (DensePath::Auto).
inline constexpr int64_t kDenseGemvMaxTokens = 8;
// Auto takes it for one token only: at n = 8 it took 84 us on 14336x4096 where cuBLAS takes
// ~36 us even at n = 32 (H200).
inline constexpr int64_t kDenseGemvAutoMaxTokens = 1;
bool dense_gemv_supported(const Tensor& x, const Tensor& weight);
// accumulate: out += x weight^T (a residual add in the same kernel).
void dense_gemv(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out,
                bool accumulate = false);
// Up to three matrices of one x as one launch (q/k/v): outs[i] = x ws[i]^T; or with `swiglu` two
// of equal rows (gate, up) and one output: silu(x gate^T) * (x up^T). One dtype and width.
bool dense_gemv_group_supported(const Tensor& x,  // [n, in] f32
                                std::span<const Tensor* const> ws, bool swiglu);
void dense_gemv_group(CudaContext& ctx, const Tensor& x,  // [n, in] f32
                      std::span<const Tensor* const> ws,  // [out_i, in] bf16 | f16
                      std::span<Tensor* const> outs,      // [n, out_i] f32
                      bool swiglu, bool accumulate);
enum class DensePath { Auto, Gemv, Gemm };

// Dense linear through cuBLAS: bf16/f16 weights with the activations rounded to the weight's
// type and fp32 accumulation and output; f32 weights in plain fp32 (no TF32).
void linear_dense(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out,
                  DensePath path = DensePath::Auto);

class Nf4Workspace;
// Dp4aGemv: integer-pipe GEMV for n <= kNf4Dp4aMaxTokens (4), int8 codes and activations, the
// default for decode where the shape allows (nf4_gemv_dp4a.cu). StreamGemv: CUDA-core streaming
// dequantize-and-multiply for n <= kNf4StreamMaxTokens (8), fp32 (nf4_gemv_stream.cu). FusedGemv:
// tensor-core dequantize-and-multiply for n <= kNf4GemvMaxTokens (32), bf16 operands.
// DequantizeGemm: dequantize into a dense scratch matrix, then cublasGemmEx.
// DequantizeLt: dequantize into the workspace's shared buffer, then cuBLASLt (needs `workspace`).
enum class Nf4Path { Auto, Dp4aGemv, StreamGemv, FusedGemv, DequantizeGemm, DequantizeLt };
// `w` holds device tensors (see upload_nf4). `workspace` (the backend's) may be null: the dense
// matrix then comes from the caching allocator.
void linear_nf4(CudaContext& ctx, const Tensor& x, const nf4::Nf4Weight& w, Tensor& out,
                Nf4Path path = Nf4Path::Auto, Nf4Workspace* workspace = nullptr);
// Several NF4 projections of one x as one dp4a launch (decode: n <= kNf4Dp4aMaxTokens): outs[i] =
// x ws[i]^T, or with `swiglu` (ws = gate, up) outs[0] = silu(x gate^T) * (x up^T). Returns false,
// having done nothing, when the group cannot run as one launch (the caller runs the ops one by
// one).
struct Dp4aOptions;
bool linear_nf4_group(CudaContext& ctx,
                      const Tensor& x,                            // [n, in] f32
                      std::span<const nf4::Nf4Weight* const> ws,  // device tensors
                      std::span<Tensor* const> outs, bool swiglu,
                      const Dp4aOptions& options);  // each [n, out_i] f32
// The whole NF4 weight dequantized to `out` ([rows, cols] of w.original_dtype), bit-exact with
// nf4::dequantize.
// `staged` (the default) writes through shared memory so a warp's stores are contiguous; false
// takes the direct kernel (kept for the timing comparison).
void dequantize_nf4(CudaContext& ctx, const nf4::Nf4Weight& w, Tensor& out, bool staged = true);
// The fused GEMV's requirements on the layout (cols a multiple of 32, 16-byte aligned rows).
bool nf4_gemv_supported(const nf4::Nf4Weight& w);

// ---- Training: the backward ops, loss and optimizer of backend.h (backward_*.cu). ----

// backward_rmsnorm.cu
void rmsnorm_backward(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps,
                      const Tensor& dy, Tensor& dx);
// rope.cu (the forward kernel rotating by -angle)
void rope_backward(CudaContext& ctx, Tensor& grad, const Tensor& positions, const Tensor& inv_freq);
// backward_attention.cu: FlashAttention-2 backward (log-sum-exp pass, then one block per key tile
// and KV head accumulating dK/dV on chip, dQ by atomics).
void attention_backward(CudaContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& d_out, Tensor& dq, Tensor& dk, Tensor& dv);
// backward_attention_mma.cu: the FlashAttention-2 backward on the tensor cores (bf16 operands,
// fp32 accumulation), head dims 64 and 128.
bool attention_backward_mma_supported(int64_t head_dim);
void attention_backward_mma(CudaContext& ctx,
                            const Tensor& q,      // [n, H, D] f32
                            const Tensor& k,      // [n, Hkv, D] f32
                            const Tensor& v,      // [n, Hkv, D] f32
                            const Tensor& d_out,  // [n, H * D] f32
                            Tensor& dq,           // [n, H, D] f32
                            Tensor& dk,           // [n, Hkv, D] f32
                            Tensor& dv);          // [n, Hkv, D] f32
// backward_attention_naive.cu: the same gradients with the probabilities materialized per kv
// head's query heads, through cuBLAS fp32 GEMMs (`--attn naive`).
void attention_backward_naive(CudaContext& ctx,
                              const Tensor& q,      // [n, H, D] f32
                              const Tensor& k,      // [n, Hkv, D] f32
                              const Tensor& v,      // [n, Hkv, D] f32
                              const Tensor& d_out,  // [n, H * D] f32
                              Tensor& dq,           // [n, H, D] f32
                              Tensor& dk,           // [n, Hkv, D] f32
                              Tensor& dv);          // [n, Hkv, D] f32
// backward_elementwise.cu
void swiglu_backward(CudaContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& ds,
                     Tensor& d_gate, Tensor& d_up);
void scale(CudaContext& ctx, const Tensor& x, float s, Tensor& out);
void multiply(CudaContext& ctx, const Tensor& x, const Tensor& y, Tensor& out);
void dropout_mask(CudaContext& ctx, uint64_t base, uint64_t threshold, float keep_scale,
                  Tensor& mask);
// backward_linear.cu: dx (+)= dy W through cuBLAS (bf16/f16 W: dy rounded to W's type, fp32
// accumulation; NF4 W: dequantized one weight at a time into a reused scratch matrix).
void linear_backward_input_dense(CudaContext& ctx, const Tensor& dy, const Tensor& weight,
                                 Tensor& dx, bool accumulate);
void linear_backward_input_nf4(CudaContext& ctx, const Tensor& dy, const nf4::Nf4Weight& w,
                               Tensor& dx, bool accumulate);
// f32 GEMMs (no TF32) for the LoRA branch: c = alpha * product (+ c), as Backend::matmul_*.
void matmul_tn(CudaContext& ctx, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update);
void matmul_nn(CudaContext& ctx, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update);
void matmul_nt(CudaContext& ctx, const Tensor& a, const Tensor& b, Tensor& c,
               const GemmUpdate& update);
// backward_loss.cu
void cross_entropy(CudaContext& ctx, Tensor& logits, const Tensor& targets, double normalizer,
                   Tensor& losses);
// backward_optimizer.cu
double sum_of_squares(CudaContext& ctx, std::span<const Tensor> xs);
void adamw_step(CudaContext& ctx, Tensor& param, const Tensor& grad, Tensor& exp_avg,
                Tensor& exp_avg_sq, const AdamWUpdate& update);

}  // namespace llamaq::cuda
