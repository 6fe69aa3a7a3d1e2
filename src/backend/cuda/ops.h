// The CUDA op entries behind CudaBackend: each unpacks and checks its tensors, then calls the
// launcher of its kernel family (one .cu file per family). All work is queued on ctx.stream().
// Several ops expose their alternative paths (flash vs split-KV attention, fused NF4 GEMV vs
// dequantize + GEMM) so that the GPU tests can check each path against the CPU at every size.
#pragma once

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"

namespace llamaq::cuda {

void embedding(CudaContext& ctx, const Tensor& table, const Tensor& ids, Tensor& out);
void rmsnorm(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void rope(CudaContext& ctx, Tensor& x, const Tensor& positions, const Tensor& inv_freq);
void swiglu(CudaContext& ctx, const Tensor& gate, const Tensor& up, Tensor& out);
void add_inplace(CudaContext& ctx, Tensor& x, const Tensor& y);
void argmax(CudaContext& ctx, const Tensor& logits, Tensor& ids);
void kv_store(CudaContext& ctx, const Tensor& k, const Tensor& v, const Tensor& positions,
              const KvLayerView& kv);

// f32 activations -> a bf16 or f16 copy (the GEMM operand); same shape.
void convert_activations(CudaContext& ctx, const Tensor& x, Tensor& out, const char* op);

enum class AttentionPath { Auto, Flash, SplitKv };
void attention(CudaContext& ctx, const Tensor& q, const Tensor& positions, const KvLayerView& kv,
               Tensor& out, AttentionPath path = AttentionPath::Auto);

// Dense matrix-vector kernel for 1..kDenseGemvMaxTokens tokens with bf16/f16 weights (decode);
// f32 activations used as they are. linear_dense picks it when supported (DensePath::Auto).
inline constexpr int64_t kDenseGemvMaxTokens = 8;
bool dense_gemv_supported(const Tensor& x, const Tensor& weight);
void dense_gemv(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out);
enum class DensePath { Auto, Gemv, Gemm };

// Dense linear through cuBLAS: bf16/f16 weights with the activations rounded to the weight's
// type and fp32 accumulation and output; f32 weights in plain fp32 (no TF32).
void linear_dense(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out,
                  DensePath path = DensePath::Auto);

enum class Nf4Path { Auto, FusedGemv, DequantizeGemm };
// `w` holds device tensors (see upload_nf4).
void linear_nf4(CudaContext& ctx, const Tensor& x, const nf4::Nf4Weight& w, Tensor& out,
                Nf4Path path = Nf4Path::Auto);
// The whole NF4 weight dequantized to `out` ([rows, cols] of w.original_dtype), bit-exact with
// nf4::dequantize.
void dequantize_nf4(CudaContext& ctx, const nf4::Nf4Weight& w, Tensor& out);
// The fused GEMV's requirements on the layout (cols a multiple of 32, 16-byte aligned rows).
bool nf4_gemv_supported(const nf4::Nf4Weight& w);

}  // namespace llamaq::cuda
