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

// Dense linear through cuBLAS: bf16/f16 weights with the activations rounded to the weight's
// type and fp32 accumulation and output; f32 weights in plain fp32 (no TF32).
void linear_dense(CudaContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out);

class Nf4Workspace;
// FusedGemv: tensor-core dequantize-and-multiply for n <= kNf4GemvMaxTokens (32).
// DequantizeGemm: dequantize into a dense scratch matrix, then cublasGemmEx.
// DequantizeLt: dequantize into the workspace's shared buffer, then cuBLASLt (needs `workspace`).
enum class Nf4Path { Auto, FusedGemv, DequantizeGemm, DequantizeLt };
// `w` holds device tensors (see upload_nf4). `workspace` (the backend's) may be null: the dense
// matrix then comes from the caching allocator.
void linear_nf4(CudaContext& ctx, const Tensor& x, const nf4::Nf4Weight& w, Tensor& out,
                Nf4Path path = Nf4Path::Auto, Nf4Workspace* workspace = nullptr);
// The whole NF4 weight dequantized to `out` ([rows, cols] of w.original_dtype), bit-exact with
// nf4::dequantize.
void dequantize_nf4(CudaContext& ctx, const nf4::Nf4Weight& w, Tensor& out);
// The fused GEMV's requirements on the layout (cols a multiple of 32, 16-byte aligned rows).
bool nf4_gemv_supported(const nf4::Nf4Weight& w);

}  // namespace llamaq::cuda
