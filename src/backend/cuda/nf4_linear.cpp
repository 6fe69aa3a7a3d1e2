// The NF4 linear op. Decode (n <= 4) takes the integer-pipe GEMV (nf4_gemv_dp4a.cu) where the shape
// allows it, else (n <= 8) the streaming CUDA-core GEMV (nf4_gemv_stream.cu), small
// batches (n <= 32) the fused tensor-core GEMV (nf4_gemv.cu); both read the 4-bit weight once; more
// tokens dequantize the weight into a dense matrix of its original dtype (the backend's shared
// workspace buffer when there is one) and run a bf16 GEMM on it: cublasGemmEx or cuBLASLt,
// whichever kPrefillPath names (picked by gpu_op_timing).
#include <fmt/format.h>

#include <bit>
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/nf4_params.h"
#include "backend/cuda/nf4_workspace.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/tensor_checks.h"

namespace llamaq::cuda {
namespace {

// The prefill path Auto takes (n > kNf4GemvMaxTokens).
constexpr Nf4Path kPrefillPath = Nf4Path::DequantizeGemm;
// Above this many tokens Auto dequantizes and runs the tensor-core GEMM instead of the GEMV
// (H200, 14336x4096: GEMV 71 us at n = 8, 186 us at n = 32; dequantize + GEMM ~112 us at n = 32).
constexpr int64_t kAutoGemvMaxTokens = 12;

Nf4Rounding rounding_of(DType dtype) {
  switch (dtype) {
    case DType::BF16:
      return Nf4Rounding::Bf16;
    case DType::F16:
      return Nf4Rounding::F16;
    default:
      return Nf4Rounding::F32;
  }
}

void require_device_nf4(const nf4::Nf4Weight& w) {
  const char* op = "linear";
  require_on_device(w.packed, op, "nf4 packed data");
  require_on_device(w.absmax, op, "nf4 absmax");
  if (w.double_quant) {
    require_on_device(w.nested_absmax, op, "nf4 nested_absmax");
    require_on_device(w.nested_map, op, "nf4 nested_map");
  }
}

}  // namespace

Nf4Params make_nf4_params(const nf4::Nf4Weight& w) {
  require_device_nf4(w);
  Nf4Params p{};
  p.packed = w.packed.data_as<const uint8_t>();
  p.absmax = w.double_quant ? nullptr : w.absmax.data_as<const float>();
  p.absmax_codes = w.double_quant ? w.absmax.data_as<const uint8_t>() : nullptr;
  p.nested_absmax = w.double_quant ? w.nested_absmax.data_as<const float>() : nullptr;
  p.nested_map = w.double_quant ? w.nested_map.data_as<const float>() : nullptr;
  p.nested_offset = w.nested_offset;
  std::memcpy(p.code_table, w.code_table.data(), sizeof(p.code_table));
  p.rows = w.rows;
  p.cols = w.cols;
  require(
      nf4::valid_block_size(w.block_size), "linear",
      "nf4 block size " + std::to_string(w.block_size) + " is not a power of two in [32, 4096]");
  require(w.blocks() < (int64_t(1) << 31) && w.nested_block_size > 0 &&
              w.nested_block_size < (int64_t(1) << 31),
          "linear", "nf4 weight has too many blocks for 32-bit block indexing");
  p.block_size = int(w.block_size);
  p.block_shift = std::countr_zero(uint64_t(w.block_size));
  p.nested_block_size = unsigned(w.nested_block_size);
  p.nested_shift = std::has_single_bit(uint64_t(w.nested_block_size))
                       ? std::countr_zero(uint64_t(w.nested_block_size))
                       : -1;
  p.rounding = rounding_of(w.original_dtype);
  p.double_quant = w.double_quant;
  return p;
}

bool nf4_gemv_supported(const nf4::Nf4Weight& w) {
  return w.cols % 32 == 0 && w.block_size % 32 == 0;
}

void linear_nf4(CudaContext& ctx, const Tensor& x, const nf4::Nf4Weight& w, Tensor& out,
                Nf4Path path, Nf4Workspace* workspace) {
  const char* op = "linear";
  require_tensor(x, DType::F32, 2, op, "x");
  const int64_t n = x.dim(0);
  require(x.dim(1) == w.cols, op,
          fmt::format("x {} does not fit the NF4 weight [{}, {}]", shape_to_string(x.shape()),
                      w.rows, w.cols));
  require_tensor(out, DType::F32, 2, op, "out");
  require_shape(out, {n, w.rows}, op, "out");
  if (out.numel() == 0) return;
  const bool aligned = reinterpret_cast<uintptr_t>(x.data()) % 16 == 0;
  const bool gemv_ok = nf4_gemv_supported(w) && aligned && n <= kNf4GemvMaxTokens;
  const bool stream_ok =
      n <= kNf4StreamMaxTokens && aligned && nf4_stream_gemv_supported(make_nf4_params(w));
  // Auto takes the dp4a GEMV for up to 4 tokens where the shape allows (H200 lab, one token:
  // 14336x4096 13-15 us against 33 for the streaming kernel; 4096x4096 7-9 us against 12 for the
  // fused one). Otherwise the streaming GEMV for one token on the large matrices only: it beat
  // the fused GEMV there (14336x4096: 33 vs 40 us; 4096x14336: 31 vs 34 us) and lost on 4096x4096
  // (13.2 vs 12.0), 1024x4096 and at n >= 2.
  const bool stream_auto = stream_ok && n == 1 && w.rows * w.cols >= (int64_t(32) << 20);
  const bool dp4a_ok = n <= kNf4Dp4aMaxTokens && aligned &&
                       nf4_dp4a_gemv_supported(make_nf4_params(w), int(n), ctx.multiprocessors());
  if (path == Nf4Path::Auto) {
    path = dp4a_ok                              ? Nf4Path::Dp4aGemv
           : stream_auto                        ? Nf4Path::StreamGemv
           : gemv_ok && n <= kAutoGemvMaxTokens ? Nf4Path::FusedGemv
           : workspace                          ? kPrefillPath
                                                : Nf4Path::DequantizeGemm;
  }
  if (path == Nf4Path::Dp4aGemv) {
    launch_nf4_dp4a_gemv(make_nf4_params(w), x.data_as<const float>(), out.data_as<float>(), int(n),
                         ctx.multiprocessors(), ctx.stream());
    return;
  }
  if (path == Nf4Path::StreamGemv) {
    require(stream_ok, op,
            fmt::format("the streaming NF4 GEMV needs cols % 8 == 0, aligned x and n <= {}",
                        kNf4StreamMaxTokens));
    launch_nf4_stream_gemv(make_nf4_params(w), x.data_as<const float>(), out.data_as<float>(),
                           int(n), ctx.multiprocessors(), ctx.stream());
    return;
  }
  if (path == Nf4Path::FusedGemv) {
    require(gemv_ok, op,
            fmt::format("the fused NF4 GEMV needs cols % 32 == 0, aligned x and n <= {}",
                        kNf4GemvMaxTokens));
    launch_nf4_gemv(make_nf4_params(w), x.data_as<const float>(), out.data_as<float>(), int(n),
                    ctx.multiprocessors(), ctx.stream());
    return;
  }
  Tensor dense = workspace ? workspace->dense(w.original_dtype, w.rows, w.cols)
                           : ctx.empty(w.original_dtype, {w.rows, w.cols}, op);
  dequantize_nf4(ctx, w, dense);
  if (path == Nf4Path::DequantizeLt && w.original_dtype != DType::F32 && w.cols > 0) {
    require(workspace != nullptr, op, "the cuBLASLt NF4 path needs the backend's workspace");
    Tensor x16 = ctx.empty(w.original_dtype, x.shape(), op);
    convert_activations(ctx, x, x16, op);
    workspace->gemm(x16.data(), dense, out.data_as<float>(), checked_int(n, op, "tokens"),
                    checked_int(w.cols, op, "in_features"),
                    checked_int(w.rows, op, "out_features"));
    return;
  }
  linear_dense(ctx, x, dense, out);
}

bool linear_nf4_group(CudaContext& ctx, const Tensor& x, std::span<const nf4::Nf4Weight* const> ws,
                      std::span<Tensor* const> outs, bool swiglu, const Dp4aOptions& options) {
  const char* op = "linear";
  require_tensor(x, DType::F32, 2, op, "x");
  const int64_t n = x.dim(0);
  if (n < 1 || n > kNf4Dp4aMaxTokens || ws.empty() || ws.size() > 3) return false;
  if (outs.size() != (swiglu ? 1 : ws.size())) return false;
  if (reinterpret_cast<uintptr_t>(x.data()) % 16 != 0) return false;
  Nf4Params params[3];
  float* out_data[3] = {};
  for (size_t i = 0; i < ws.size(); ++i) {
    require(x.dim(1) == ws[i]->cols, op,
            fmt::format("x {} does not fit the NF4 weight [{}, {}]", shape_to_string(x.shape()),
                        ws[i]->rows, ws[i]->cols));
    params[i] = make_nf4_params(*ws[i]);
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    require_tensor(*outs[i], DType::F32, 2, op, "out");
    require_shape(*outs[i], {n, ws[i]->rows}, op, "out");
    out_data[i] = outs[i]->data_as<float>();
  }
  const std::span<const Nf4Params> group(params, ws.size());
  if (!nf4_dp4a_group_supported(group, int(n), swiglu, options, ctx.multiprocessors())) {
    return false;
  }
  launch_nf4_dp4a_group(group, x.data_as<const float>(), std::span(out_data, outs.size()), int(n),
                        swiglu, options, ctx.multiprocessors(), ctx.stream());
  return true;
}

}  // namespace llamaq::cuda
