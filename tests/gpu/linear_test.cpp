// Linear on the GPU against the CPU reference: dense bf16/f16/f32 weights through cuBLAS, NF4
// weights through the streaming GEMV (n <= 8), the fused tensor-core GEMV (n <= 32 tokens) and
// through dequantize + GEMM (cublasGemmEx or cuBLASLt), at odd sizes. Bounds: bf16/f16 GEMMs round
// the f32 activations to the weight's type (2^-9 relative for bf16, 2^-11 for f16, independent per
// element), which gives ~2e-3 relative output error: 1e-2 is the bf16-operand bound. The fused NF4
// GEMV has bf16 operands too: x, the code value, the block scale and their product are each rounded
// to bf16 (four independent roundings of <= 2^-9 relative against the CPU's one, ~3e-3 expected),
// so the same 1e-2 bound holds; an indexing mistake gives errors of order 1. The streaming NF4 GEMV
// (decode, n <= 8) keeps x, codes and scales in fp32 but does not round code * scale to the
// weight's original dtype as the CPU does: each weight differs by <= half an ulp of that dtype,
// independently, so the output differs by the RMS of that rounding, ~1.6e-3 relative for bf16
// (bound 1e-2, as above) and ~2e-4 for f16 (bound 2e-3); f32 originals only differ in summation
// order (bound 1e-4). The dp4a NF4 GEMV (decode, n <= 4) uses int8 code values (round(127 code):
// RMS error ~0.4% of a weight) and int8 activations per 32 columns (RMS ~0.5% of an element):
// ~6e-3 relative expected, so it has the 1e-2 bound whatever the original dtype; an indexing or
// decoding mistake gives errors of order 1. f32 weights keep fp32 operands: only summation order
// differs, bound 1e-4 (measured ~1e-7). The NF4 dequantizer must reproduce nf4::dequantize bit for
// bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "backend/cuda/nf4_params.h"
#include "backend/cuda/ops.h"
#include "core/thread_pool.h"
#include "gpu_test_support.h"
#include "quant/nf4_codec.h"

namespace llamaq {
namespace {

using gpu_test::host_values;
using gpu_test::relative_error;

constexpr double kBf16OperandTolerance = 1e-2;
constexpr double kFp32Tolerance = 1e-4;
constexpr double kF16RoundingTolerance = 2e-3;

// "token t, row r: got g, want w" for the element with the largest absolute difference, so that
// a failure says where an indexing mistake lies.
std::string worst_element(const std::vector<double>& got, const std::vector<double>& want,
                          int64_t rows) {
  size_t worst = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double diff = std::abs(got[i] - want[i]);
    if (std::isnan(diff))
      return "token " + std::to_string(int64_t(i) / rows) + ", row " +
             std::to_string(int64_t(i) % rows) + ": NaN";
    if (diff > std::abs(got[worst] - want[worst])) worst = i;
  }
  if (got.empty() || got.size() != want.size()) return "sizes differ";
  return "token " + std::to_string(int64_t(worst) / rows) + ", row " +
         std::to_string(int64_t(worst) % rows) + ": got " + std::to_string(got[worst]) + ", want " +
         std::to_string(want[worst]);
}

class CudaLinear : public gpu_test::GpuTest {
 protected:
  LinearWeight dense(DType dtype, int64_t out, int64_t in) {
    LinearWeight w;
    w.weight = gpu_test::random_tensor(dtype, {out, in}, rng_, 0.1f);
    return w;
  }
  LinearWeight quantized(int64_t out, int64_t in, bool double_quant, DType dtype = DType::BF16,
                         int64_t block_size = 64) {
    const Tensor w = gpu_test::random_tensor(dtype, {out, in}, rng_, 0.1f);
    LinearWeight q;
    q.nf4 = std::make_shared<nf4::Nf4Weight>(nf4::quantize(w, double_quant, pool_, block_size));
    return q;
  }
  std::vector<double> reference(const Tensor& x, const LinearWeight& w) {
    Tensor out = cpu().alloc(DType::F32, {x.dim(0), w.out_features()});
    cpu().linear(x, w, out);
    return host_values(gpu(), out);
  }
  double record(const std::string& key, double error) {
    RecordProperty(key, std::to_string(error));
    return error;
  }

  // linear_add (the residual add in the GEMV's epilogue) against the CPU's linear: the added part
  // (residual after - before, exact in double) has the projection's bound.
  void check_residual_add(int64_t in, int64_t n, const LinearWeight& q, const LinearWeight& q_gpu,
                          const std::string& key) {
    const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng_);
    const Tensor x_gpu = gpu().upload(x);
    // residual += x q^T: compare the added part (residual after - residual before).
    const Tensor residual = gpu_test::random_tensor(DType::F32, {n, q.out_features()}, rng_);
    Tensor residual_gpu = gpu().upload(residual);
    Tensor scratch_q = gpu().alloc(DType::F32, {n, q.out_features()});
    gpu().linear_add(x_gpu, q_gpu, residual_gpu, scratch_q);
    const auto before = host_values(gpu(), residual), after = host_values(gpu(), residual_gpu);
    std::vector<double> added(after.size());
    for (size_t i = 0; i < added.size(); ++i)
      added[i] = after[i] - before[i];
    const auto want_add = reference(x, q);
    EXPECT_LE(record(key + "_add", relative_error(added, want_add)), kBf16OperandTolerance)
        << key << " linear_add; worst: " << worst_element(added, want_add, q.out_features());
  }

  std::mt19937 rng_{7};
  ThreadPool pool_{0};
};

TEST_F(CudaLinear, DenseWeightsMatchTheCpu) {
  const std::pair<int64_t, int64_t> shapes[] = {{31, 97}, {97, 320}, {333, 4096}};  // {out, in}
  for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
    for (const auto& [out, in] : shapes) {
      const LinearWeight w = dense(dtype, out, in);
      const LinearWeight w_gpu = gpu().upload_linear(w);
      for (int64_t n : {1, 7, 97, 1025}) {
        const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng_);
        Tensor got = gpu_test::poisoned(gpu(), {n, out});
        gpu().linear(gpu().upload(x), w_gpu, got);
        const double bound = dtype == DType::F32 ? kFp32Tolerance : kBf16OperandTolerance;
        const std::string key = std::string(dtype_name(dtype)) + "_" + std::to_string(out) + "x" +
                                std::to_string(in) + "_n" + std::to_string(n);
        EXPECT_LE(record(key, relative_error(host_values(gpu(), got), reference(x, w))), bound)
            << key;
      }
    }
  }
}

TEST_F(CudaLinear, Nf4DequantizationIsBitExact) {
  struct Case {
    int64_t out, in;
    bool double_quant;
    DType dtype;
    int64_t block_size;
  };
  for (const Case& c :
       {Case{97, 320, true, DType::BF16, 64}, Case{7, 97, false, DType::BF16, 64},
        Case{33, 95, true, DType::F16, 32}, Case{5, 513, true, DType::F32, 128},
        Case{600, 256, true, DType::BF16, 64},
        // 1057 chunks of 32: a last warp with one chunk (staged kernel's tail)
        Case{1057, 32, true, DType::BF16, 32}, Case{33, 1024, false, DType::F32, 64}}) {
    SCOPED_TRACE(std::to_string(c.out) + "x" + std::to_string(c.in));
    const LinearWeight w = quantized(c.out, c.in, c.double_quant, c.dtype, c.block_size);
    const Tensor want = nf4::dequantize(*w.nf4, c.dtype, pool_);
    for (const bool staged : {true, false}) {
      Tensor got = gpu().alloc(c.dtype, {c.out, c.in});
      cuda::dequantize_nf4(gpu().context(), *gpu().device_nf4(w.nf4), got, staged);
      std::vector<uint8_t> bytes(size_t(got.nbytes()));
      gpu().copy_to_host(got, bytes.data());
      EXPECT_EQ(std::memcmp(bytes.data(), want.data(), bytes.size()), 0) << "staged " << staged;
    }
  }
}

TEST_F(CudaLinear, Nf4FusedGemvMatchesTheCpu) {
  // 1056 columns: a last chunk of 32 (chunks are 128); 4500 rows: tiles of 16 rows (fewer rows
  // take tiles of 8); rows not multiples of 8 or 16.
  const std::pair<int64_t, int64_t> shapes[] = {{97, 320}, {333, 4096}, {1, 64}, {4500, 1056}};
  for (bool double_quant : {true, false}) {
    for (const auto& [out, in] : shapes) {
      const LinearWeight w = quantized(out, in, double_quant);
      const auto device = gpu().device_nf4(w.nf4);
      for (int64_t n : {1, 7, 8, 9, 16, 17, 32}) {
        const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng_);
        Tensor got = gpu_test::poisoned(gpu(), {n, out});
        cuda::linear_nf4(gpu().context(), gpu().upload(x), *device, got, cuda::Nf4Path::FusedGemv);
        const std::string key = std::string(double_quant ? "dq_" : "plain_") + std::to_string(out) +
                                "x" + std::to_string(in) + "_n" + std::to_string(n);
        EXPECT_LE(record(key, relative_error(host_values(gpu(), got), reference(x, w))),
                  kBf16OperandTolerance)
            << key;
      }
    }
  }
}

TEST_F(CudaLinear, Nf4StreamGemvMatchesTheCpu) {
  struct Case {
    int64_t out, in;
    bool double_quant;
    DType dtype;
    int64_t block_size;
  };
  // Columns: 64 (one partial step of 256), 72 (blocks of 64 straddle rows), 328 and 1056 (a partial
  // last step and a partial unrolled chunk), 4096 and 14336 (whole chunks). Rows not multiples of
  // the 16 (2 per warp) or 32 (4 per warp) of a block; 8455 rows take 4 rows per warp for n <= 4
  // (on GPUs with up to 132 multiprocessors: the H200).
  const Case cases[] = {
      {1, 64, true, DType::BF16, 64},      {97, 320, true, DType::BF16, 64},
      {97, 320, false, DType::BF16, 64},   {333, 4096, true, DType::BF16, 64},
      {333, 4096, false, DType::F16, 64},  {31, 72, true, DType::BF16, 64},
      {45, 328, false, DType::F16, 32},    {45, 328, true, DType::F32, 128},
      {4500, 1056, true, DType::BF16, 64}, {8455, 328, true, DType::BF16, 64},
      {8455, 328, false, DType::F16, 64},  {37, 14336, true, DType::BF16, 64},
      {37, 14336, false, DType::BF16, 64},
  };
  for (const Case& c : cases) {
    const LinearWeight w = quantized(c.out, c.in, c.double_quant, c.dtype, c.block_size);
    const auto device = gpu().device_nf4(w.nf4);
    const double bound = c.dtype == DType::BF16  ? kBf16OperandTolerance
                         : c.dtype == DType::F16 ? kF16RoundingTolerance
                                                 : kFp32Tolerance;
    for (int64_t n : {1, 2, 7, 8, 9, 16, 32}) {
      const Tensor x = gpu_test::random_tensor(DType::F32, {n, c.in}, rng_);
      const Tensor x_gpu = gpu().upload(x);
      const std::string key = std::string(c.double_quant ? "stream_dq_" : "stream_plain_") +
                              std::string(dtype_name(c.dtype)) + "_b" +
                              std::to_string(c.block_size) + "_" + std::to_string(c.out) + "x" +
                              std::to_string(c.in) + "_n" + std::to_string(n);
      const auto want = reference(x, w);
      Tensor got = gpu_test::poisoned(gpu(), {n, c.out});
      if (n <= cuda::kNf4StreamMaxTokens) {
        cuda::linear_nf4(gpu().context(), x_gpu, *device, got, cuda::Nf4Path::StreamGemv);
        const auto values = host_values(gpu(), got);
        EXPECT_LE(record(key, relative_error(values, want)), bound)
            << key << "; worst: " << worst_element(values, want, c.out);
      }
      // What Auto picks (the streaming kernel up to 8 tokens, then the tensor-core GEMV or the
      // dequantize + GEMM path, both with bf16 operands) must agree too.
      Tensor automatic = gpu_test::poisoned(gpu(), {n, c.out});
      cuda::linear_nf4(gpu().context(), x_gpu, *device, automatic);
      const auto values = host_values(gpu(), automatic);
      EXPECT_LE(relative_error(values, want), std::max(bound, kBf16OperandTolerance))
          << "auto " << key << "; worst: " << worst_element(values, want, c.out);
    }
  }
}

TEST_F(CudaLinear, Nf4Dp4aGemvMatchesTheCpu) {
  struct Case {
    int64_t out, in;
    bool double_quant;
    DType dtype;
    int64_t block_size;
  };
  // Columns: 1024 (one warp per row, 8 rows per pass), 3072 (3 warps, 2 rows: Llama 3.2 3B),
  // 4096, 14336 (14 warps, one row per pass: 448 threads). Rows: 1, odd counts that leave a
  // partial last pass, and 4500 (several row groups per CTA, so the register ring wraps around).
  const Case cases[] = {
      {1, 1024, true, DType::BF16, 64},    {97, 1024, true, DType::BF16, 64},
      {97, 3072, false, DType::BF16, 64},  {333, 4096, true, DType::BF16, 64},
      {333, 4096, false, DType::F16, 32},  {45, 4096, true, DType::F32, 128},
      {4500, 1024, true, DType::BF16, 64}, {4500, 4096, true, DType::BF16, 64},
      {37, 14336, true, DType::BF16, 64},  {1025, 14336, false, DType::BF16, 64},
  };
  for (const Case& c : cases) {
    const LinearWeight w = quantized(c.out, c.in, c.double_quant, c.dtype, c.block_size);
    const auto device = gpu().device_nf4(w.nf4);
    ASSERT_TRUE(cuda::nf4_dp4a_gemv_supported(cuda::make_nf4_params(*device), 1,
                                              gpu().context().multiprocessors()))
        << c.out << "x" << c.in;
    for (int64_t n = 1; n <= cuda::kNf4Dp4aMaxTokens; ++n) {
      const Tensor x = gpu_test::random_tensor(DType::F32, {n, c.in}, rng_);
      const std::string key = std::string(c.double_quant ? "dp4a_dq_" : "dp4a_plain_") +
                              std::string(dtype_name(c.dtype)) + "_b" +
                              std::to_string(c.block_size) + "_" + std::to_string(c.out) + "x" +
                              std::to_string(c.in) + "_n" + std::to_string(n);
      const auto want = reference(x, w);
      Tensor got = gpu_test::poisoned(gpu(), {n, c.out});
      cuda::linear_nf4(gpu().context(), gpu().upload(x), *device, got, cuda::Nf4Path::Dp4aGemv);
      const auto values = host_values(gpu(), got);
      EXPECT_LE(record(key, relative_error(values, want)), kBf16OperandTolerance)
          << key << "; worst: " << worst_element(values, want, c.out);
    }
  }
}

// q/k/v as one launch (linear_group) and gate/up with SwiGLU as one launch (linear_swiglu), against
// the CPU's separate ops. Each projection has the 1e-2 bound above; silu(g) * u is a product of
// two such values, and to first order a product's relative error is the sum of its factors', so
// the SwiGLU output has 2e-2 (measured 1.03e-2 to 1.09e-2 on the H200, also where the backend
// falls back to two GEMVs and the SwiGLU kernel: it is the int8 rounding, not the fusion). Rows of
// unequal counts leave partial passes inside the group; 8192 columns give one row per pass, where
// SwiGLU cannot pair rows and the backend falls back to two GEMVs.
TEST_F(CudaLinear, Nf4Dp4aGroupsMatchTheCpu) {
  struct Case {
    int64_t q_rows, kv_rows, in, ffn;
  };
  const Case cases[] = {
      {97, 33, 1024, 161}, {333, 65, 4096, 333}, {64, 16, 2048, 96}, {40, 8, 8192, 24}};
  for (const Case& c : cases) {
    const LinearWeight q = quantized(c.q_rows, c.in, true), k = quantized(c.kv_rows, c.in, true),
                       v = quantized(c.kv_rows, c.in, true);
    const LinearWeight gate = quantized(c.ffn, c.in, true), up = quantized(c.ffn, c.in, true);
    const LinearWeight qg = gpu().upload_linear(q), kg = gpu().upload_linear(k),
                       vg = gpu().upload_linear(v), gg = gpu().upload_linear(gate),
                       ug = gpu().upload_linear(up);
    for (int64_t n = 1; n <= cuda::kNf4Dp4aMaxTokens; ++n) {
      const std::string key = "dp4a_group_" + std::to_string(c.in) + "_n" + std::to_string(n);
      const Tensor x = gpu_test::random_tensor(DType::F32, {n, c.in}, rng_);
      const Tensor xg = gpu().upload(x);
      Tensor outs[3] = {gpu_test::poisoned(gpu(), {n, c.q_rows}),
                        gpu_test::poisoned(gpu(), {n, c.kv_rows}),
                        gpu_test::poisoned(gpu(), {n, c.kv_rows})};
      const LinearWeight* ws[] = {&qg, &kg, &vg};
      Tensor* out_ptrs[] = {&outs[0], &outs[1], &outs[2]};
      gpu().linear_group(xg, ws, out_ptrs);
      const LinearWeight* host[] = {&q, &k, &v};
      for (int i = 0; i < 3; ++i) {
        const auto values = host_values(gpu(), outs[i]);
        const auto want = reference(x, *host[i]);
        EXPECT_LE(record(key + "_m" + std::to_string(i), relative_error(values, want)),
                  kBf16OperandTolerance)
            << key << " matrix " << i << "; worst: " << worst_element(values, want, outs[i].dim(1));
      }
      Tensor product = gpu_test::poisoned(gpu(), {n, c.ffn});
      Tensor scratch = gpu_test::poisoned(gpu(), {n, c.ffn});
      gpu().linear_swiglu(xg, gg, ug, product, scratch);
      Tensor g_cpu = cpu().alloc(DType::F32, {n, c.ffn}),
             u_cpu = cpu().alloc(DType::F32, {n, c.ffn});
      cpu().linear(x, gate, g_cpu);
      cpu().linear(x, up, u_cpu);
      cpu().swiglu(g_cpu, u_cpu, g_cpu);
      const auto values = host_values(gpu(), product);
      const auto want = host_values(gpu(), g_cpu);
      EXPECT_LE(record(key + "_swiglu", relative_error(values, want)), 2 * kBf16OperandTolerance)
          << key << " swiglu; worst: " << worst_element(values, want, c.ffn);
      check_residual_add(c.in, n, q, qg, key);
    }
  }
}

TEST_F(CudaLinear, Nf4Dp4aGemvRejectsWhatItCannotRun) {
  const LinearWeight narrow = quantized(64, 320, true);  // cols not a multiple of 1024
  const Tensor x = gpu().alloc(DType::F32, {1, 320});
  Tensor out = gpu().alloc(DType::F32, {1, 64});
  EXPECT_THROW(cuda::linear_nf4(gpu().context(), x, *gpu().device_nf4(narrow.nf4), out,
                                cuda::Nf4Path::Dp4aGemv),
               Error);
  const LinearWeight wide = quantized(64, 1024, true);
  const Tensor x5 = gpu().alloc(DType::F32, {5, 1024});
  Tensor out5 = gpu().alloc(DType::F32, {5, 64});
  EXPECT_THROW(cuda::linear_nf4(gpu().context(), x5, *gpu().device_nf4(wide.nf4), out5,
                                cuda::Nf4Path::Dp4aGemv),
               Error);
}

TEST_F(CudaLinear, Nf4StreamGemvRejectsMoreThan8Tokens) {
  const LinearWeight w = quantized(64, 128, true);
  const Tensor x = gpu().alloc(DType::F32, {9, 128});
  Tensor out = gpu().alloc(DType::F32, {9, 64});
  EXPECT_THROW(cuda::linear_nf4(gpu().context(), x, *gpu().device_nf4(w.nf4), out,
                                cuda::Nf4Path::StreamGemv),
               Error);
}

TEST_F(CudaLinear, Nf4DequantizeGemmMatchesTheCpu) {
  const std::pair<int64_t, int64_t> shapes[] = {{97, 320}, {31, 97}};  // 97 columns: no GEMV
  for (const auto& [out, in] : shapes) {
    const LinearWeight w = quantized(out, in, true);
    for (int64_t n : {1, 7, 97, 1025}) {
      const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng_);
      const Tensor x_gpu = gpu().upload(x);
      Tensor got = gpu_test::poisoned(gpu(), {n, out});
      cuda::linear_nf4(gpu().context(), x_gpu, *gpu().device_nf4(w.nf4), got,
                       cuda::Nf4Path::DequantizeGemm);
      const auto expected = reference(x, w);
      const std::string key =
          std::to_string(out) + "x" + std::to_string(in) + "_n" + std::to_string(n);
      EXPECT_LE(record(key, relative_error(host_values(gpu(), got), expected)),
                kBf16OperandTolerance)
          << key;
      // The backend's own choice, from host NF4 tensors (uploaded on first use).
      Tensor automatic = gpu_test::poisoned(gpu(), {n, out});
      gpu().linear(x_gpu, w, automatic);
      EXPECT_LE(relative_error(host_values(gpu(), automatic), expected), kBf16OperandTolerance)
          << key;
    }
  }
}

TEST_F(CudaLinear, Nf4FusedGemvRejectsMoreThan32Tokens) {
  const LinearWeight w = quantized(64, 128, true);
  const Tensor x = gpu().alloc(DType::F32, {33, 128});
  Tensor out = gpu().alloc(DType::F32, {33, 64});
  EXPECT_THROW(
      cuda::linear_nf4(gpu().context(), x, *gpu().device_nf4(w.nf4), out, cuda::Nf4Path::FusedGemv),
      Error);
}

TEST_F(CudaLinear, Nf4DequantizeCublasLtMatchesTheCpu) {
  // Shapes in decreasing size, so that the shared buffer is reused (and once grown) across them.
  const std::pair<int64_t, int64_t> shapes[] = {{333, 4096}, {97, 320}, {600, 1056}};
  for (const auto& [out, in] : shapes) {
    const LinearWeight w = quantized(out, in, true);
    for (int64_t n : {1, 7, 97, 1025}) {
      const Tensor x = gpu_test::random_tensor(DType::F32, {n, in}, rng_);
      Tensor got = gpu_test::poisoned(gpu(), {n, out});
      cuda::linear_nf4(gpu().context(), gpu().upload(x), *gpu().device_nf4(w.nf4), got,
                       cuda::Nf4Path::DequantizeLt, &gpu().nf4_workspace());
      const std::string key =
          "lt_" + std::to_string(out) + "x" + std::to_string(in) + "_n" + std::to_string(n);
      EXPECT_LE(record(key, relative_error(host_values(gpu(), got), reference(x, w))),
                kBf16OperandTolerance)
          << key;
    }
  }
}

}  // namespace
}  // namespace llamaq
