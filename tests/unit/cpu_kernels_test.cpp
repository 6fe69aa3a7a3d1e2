// The fast CPU kernels against the fp32 reference ops, on every instruction-set level this CPU
// runs (each forced explicitly), on odd sizes: row counts that are no multiple of any vector or
// tile width, 1-, 5- and 97-token batches.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/attention_tiled.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/fast_linear.h"
#include "quant/nf4_codec.h"
#include "test_util.h"

namespace llamaq {
namespace {

using cpu::Isa;

// The SIMD levels (the portable one is their oracle).
std::vector<Isa> simd_isas() {
  std::vector<Isa> out;
  for (Isa isa : cpu::supported_isas()) {
    if (isa != Isa::Reference && isa != Isa::Portable) out.push_back(isa);
  }
  return out;
}

Tensor random_matrix(int64_t rows, int64_t cols, uint32_t seed, float stddev = 1.0f) {
  Tensor t = Tensor::zeros(DType::F32, {rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  float* p = t.data_as<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = normal(rng);
  return t;
}

Tensor to_bf16(const Tensor& f32) {
  Tensor t = Tensor::zeros(DType::BF16, f32.shape());
  for (int64_t i = 0; i < f32.numel(); ++i) {
    t.data_as<uint16_t>()[i] = float_to_bf16(f32.data_as<const float>()[i]);
  }
  return t;
}

std::vector<double> values(const Tensor& t) {
  return test::to_doubles(t);
}

Tensor run_linear(ThreadPool& pool, const Tensor& x, const LinearWeight& w, Isa isa) {
  Tensor out = Tensor::zeros(DType::F32, {x.dim(0), w.out_features()});
  if (isa == Isa::Reference) {
    cpu::linear(pool, x, w, out);
  } else {
    cpu::LinearScratch scratch;
    cpu::fast_linear(pool, cpu::kernels_for(isa), x, w, out, scratch);
  }
  return out;
}

struct Nf4Case {
  int64_t rows, cols, tokens, block_size;
  bool double_quant;
};

const Nf4Case kNf4Cases[] = {
    {37, 192, 1, 64, true},
    {37, 192, 97, 64, false},
    {130, 320, 5, 64, true},
    {3, 256, 97, 128, true},
    {1, 64, 1, 64, false},
    {45, 1024, 7, 256, true},
    // 8192 columns: 16 tokens per kernel call, so 37 tokens run as blocks of 16, 16 and 5.
    {5, 8192, 37, 64, true},
};

std::string describe(const Nf4Case& c) {
  return "rows " + std::to_string(c.rows) + " cols " + std::to_string(c.cols) + " tokens " +
         std::to_string(c.tokens) + " block " + std::to_string(c.block_size) +
         (c.double_quant ? " double-quant" : "");
}

// The weight as quantized, and as the CPU backend prepares it (block scales decoded to fp16
// once, for 64-weight blocks).
std::vector<std::pair<std::string, LinearWeight>> both_forms(const LinearWeight& w) {
  return {{"as quantized", w}, {"prepared", cpu::prepare_fast_linear(w)}};
}

TEST(CpuKernels, Nf4SimdLevelsReproduceThePortableIntegerPath) {
  ThreadPool pool(2);
  for (const Nf4Case& c : kNf4Cases) {
    SCOPED_TRACE(describe(c));
    const auto quantized = LinearWeight::quantized(std::make_shared<nf4::Nf4Weight>(
        nf4::quantize(random_matrix(c.rows, c.cols, 1), c.double_quant, pool, c.block_size)));
    ASSERT_TRUE(cpu::fast_linear_applies(quantized));
    EXPECT_EQ(cpu::prepare_fast_linear(quantized).half_scales != nullptr, c.block_size == 64);
    const Tensor x = random_matrix(c.tokens, c.cols, 2);
    for (const auto& [form, w] : both_forms(quantized)) {
      SCOPED_TRACE(form);
      const auto portable = values(run_linear(pool, x, w, Isa::Portable));
      for (Isa isa : simd_isas()) {
        SCOPED_TRACE(cpu::isa_name(isa));
        // The int32 chunk sums are identical; the SIMD levels scale per-lane partial sums and add
        // the lanes last, so their fp32 roundings differ and lanes that cancel magnify them:
        // measured up to 1.1e-6 (a single output of one chunk). One unit of error in any integer
        // chunk sum (typical magnitude ~1e4) would show as ~1e-4.
        EXPECT_LE(test::relative_error(values(run_linear(pool, x, w, isa)), portable), 1e-5);
      }
    }
  }
}

// One group call (q, k and v: x quantized once, all rows in one pool loop) gives every projection
// exactly what its own call gives: the same kernel on the same int8 activations, row by row.
// Odd row counts put weight boundaries inside the pool's chunks; 1 and 97 tokens.
TEST(CpuKernels, Nf4GroupEqualsOneCallPerWeight) {
  ThreadPool pool(2);
  std::vector<LinearWeight> weights;
  for (const int64_t rows : {37, 130, 16}) {
    weights.push_back(
        cpu::prepare_fast_linear(LinearWeight::quantized(std::make_shared<nf4::Nf4Weight>(
            nf4::quantize(random_matrix(rows, 320, uint32_t(rows)), true, pool)))));
  }
  const LinearWeight* ws[] = {&weights[0], &weights[1], &weights[2]};
  ASSERT_TRUE(cpu::fast_linear_group_applies(ws));
  for (const int64_t tokens : {1, 97}) {
    const Tensor x = random_matrix(tokens, 320, 7);
    for (Isa isa : cpu::supported_isas()) {
      if (isa == Isa::Reference) continue;
      SCOPED_TRACE(std::string(cpu::isa_name(isa)) + " tokens " + std::to_string(tokens));
      std::vector<Tensor> grouped;
      for (const LinearWeight& w : weights)
        grouped.push_back(Tensor::zeros(DType::F32, {tokens, w.out_features()}));
      Tensor* outs[] = {&grouped[0], &grouped[1], &grouped[2]};
      cpu::LinearScratch scratch;
      cpu::fast_linear_group(pool, cpu::kernels_for(isa), x, ws, outs, scratch);
      for (size_t i = 0; i < weights.size(); ++i)
        EXPECT_EQ(values(grouped[i]), values(run_linear(pool, x, weights[i], isa)))
            << "weight " << i;
    }
  }
  // A weight the group does not take (a different input width) sends the backend to one call each.
  const LinearWeight narrow = LinearWeight::quantized(
      std::make_shared<nf4::Nf4Weight>(nf4::quantize(random_matrix(8, 256, 9), true, pool)));
  const LinearWeight* mixed[] = {&weights[0], &narrow};
  EXPECT_FALSE(cpu::fast_linear_group_applies(mixed));
}

TEST(CpuKernels, Nf4Int8PathStaysWithinItsBoundOfTheFp32Reference) {
  ThreadPool pool(2);
  for (const Nf4Case& c : kNf4Cases) {
    SCOPED_TRACE(describe(c));
    const auto quantized = LinearWeight::quantized(std::make_shared<nf4::Nf4Weight>(
        nf4::quantize(random_matrix(c.rows, c.cols, 3), c.double_quant, pool, c.block_size)));
    const Tensor x = random_matrix(c.tokens, c.cols, 4);
    const auto reference = values(run_linear(pool, x, quantized, Isa::Reference));
    for (const auto& [form, w] : both_forms(quantized)) {
      SCOPED_TRACE(form);
      for (Isa isa : cpu::supported_isas()) {
        if (isa == Isa::Reference) continue;
        SCOPED_TRACE(cpu::isa_name(isa));
        // Two roundings: activations to int8 per 64 (error <= max/254 each, ~0.4% rms relative
        // for Gaussian values) and the NF4 code book to k/127 (<= 0.4% of a block's absmax); the
        // prepared form adds fp16 scales (2^-11 relative). Measured ~0.5% on these cases; 2%
        // holds for every case while a wrong nibble order, scale or code gives errors near 100%.
        EXPECT_LE(test::relative_error(values(run_linear(pool, x, w, isa)), reference), 0.02);
      }
    }
  }
}

TEST(CpuKernels, Bf16KernelsMatchTheReference) {
  ThreadPool pool(2);
  for (const auto& [rows, cols, tokens] :
       {std::tuple{37, 13, 1}, {37, 200, 97}, {5, 64, 5}, {130, 2048, 3}, {1, 1, 1}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " tokens " +
                 std::to_string(tokens));
    const auto w = LinearWeight::dense(to_bf16(random_matrix(rows, cols, 5)));
    ASSERT_TRUE(cpu::fast_linear_applies(w));
    const Tensor x = random_matrix(tokens, cols, 6);
    const auto reference = values(run_linear(pool, x, w, Isa::Reference));
    for (Isa isa : cpu::supported_isas()) {
      if (isa == Isa::Reference) continue;
      SCOPED_TRACE(cpu::isa_name(isa));
      // bf16 widens exactly; fp32 sums in another order differ by ~sqrt(cols) ulps.
      EXPECT_LE(test::relative_error(values(run_linear(pool, x, w, isa)), reference), 1e-5);
    }
  }
}

TEST(CpuKernels, WeightsTheFastKernelsDoNotTakeGoToTheReference) {
  ThreadPool pool(1);
  // 96 columns are no multiple of the 64-wide chunk; an f32 dense weight has no fast kernel.
  const auto odd = LinearWeight::quantized(
      std::make_shared<nf4::Nf4Weight>(nf4::quantize(random_matrix(5, 96, 7), true, pool, 32)));
  const auto dense_f32 = LinearWeight::dense(random_matrix(5, 96, 8));
  for (const LinearWeight* w : {&odd, &dense_f32}) {
    EXPECT_FALSE(cpu::fast_linear_applies(*w));
    const Tensor x = random_matrix(3, 96, 9);
    const Tensor expected = run_linear(pool, x, *w, Isa::Reference);
    for (Isa isa : cpu::supported_isas()) {
      auto backend = make_cpu_backend(1, isa);
      Tensor out = Tensor::zeros(DType::F32, {3, 5});
      backend->linear(x, *w, out);
      EXPECT_EQ(values(out), values(expected)) << cpu::isa_name(isa);
    }
  }
}

// A paged cache for one sequence whose blocks are handed out in reverse order (i8: q8, with its
// scales).
struct PagedCache {
  KvLayerView view;
  PagedCache(DType dtype, int64_t n_tokens, int64_t n_kv_heads, int64_t head_dim, int64_t bs) {
    const int64_t n_blocks = (n_tokens + bs - 1) / bs;
    view.k_blocks = Tensor::zeros(dtype, {n_blocks, bs, n_kv_heads, head_dim});
    view.v_blocks = Tensor::zeros(dtype, {n_blocks, bs, n_kv_heads, head_dim});
    if (dtype == DType::I8) {
      const Shape scales = {n_blocks, bs, n_kv_heads, head_dim / kv_q8_group(head_dim)};
      view.k_scales = Tensor::zeros(DType::F32, scales);
      view.v_scales = Tensor::zeros(DType::F32, scales);
    }
    view.block_table = Tensor::zeros(DType::I32, {n_blocks});
    for (int64_t b = 0; b < n_blocks; ++b)
      view.block_table.data_as<int32_t>()[b] = int32_t(n_blocks - 1 - b);
    view.block_size = bs;
  }
};

Tensor positions_from(int64_t first, int64_t n) {
  Tensor p = Tensor::zeros(DType::I32, {n});
  for (int64_t i = 0; i < n; ++i)
    p.data_as<int32_t>()[i] = int32_t(first + i);
  return p;
}

TEST(CpuKernels, TiledAttentionMatchesTheReferenceOnEveryCacheDtype) {
  ThreadPool pool(2);
  const cpu::WidenScalesKernel widen_f16 = cpu::kernels_for(cpu::best_isa()).widen_scales;
  // GQA groups of 3; 40 = 2.5 zmm and one q8 scale per head row, 64 = two q8 groups of 32.
  for (const int64_t head_dim : {40, 64})
    for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
      const int64_t n_heads = 6, n_kv_heads = 2;
      for (const auto& [tokens, block_size] : {std::pair{97, 16}, {23, 5}, {1, 4}}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + " head_dim " + std::to_string(head_dim) +
                     " tokens " + std::to_string(tokens) + " block " + std::to_string(block_size));
        PagedCache cache(dtype, tokens + 3, n_kv_heads, head_dim, block_size);
        // Three earlier positions already in the cache, then `tokens` new ones attending to them.
        const Tensor k = random_matrix(tokens + 3, n_kv_heads * head_dim, 10)
                             .reshaped({tokens + 3, n_kv_heads, head_dim});
        const Tensor v = random_matrix(tokens + 3, n_kv_heads * head_dim, 11)
                             .reshaped({tokens + 3, n_kv_heads, head_dim});
        cpu::kv_store(k, v, positions_from(0, tokens + 3), cache.view);
        const Tensor q = random_matrix(tokens, n_heads * head_dim, 12, 0.5f)
                             .reshaped({tokens, n_heads, head_dim});
        const Tensor positions = positions_from(3, tokens);
        Tensor expected = Tensor::zeros(DType::F32, {tokens, n_heads * head_dim});
        Tensor got = Tensor::zeros(DType::F32, {tokens, n_heads * head_dim});
        cpu::attention(pool, q, positions, cache.view, expected);
        cpu::attention_tiled(pool, q, positions, cache.view, got, widen_f16);
        // Both read the same stored (possibly bf16 or q8) values in fp32; the online softmax
        // rescales partial sums per tile, a few ulps apart from the one-pass softmax.
        EXPECT_LE(test::relative_error(values(got), values(expected)), 1e-5);
      }
    }
}

TEST(CpuKernels, Bf16KvCacheStoresRoundedValues) {
  PagedCache cache(DType::BF16, 9, 1, 8, 4);
  const Tensor k = random_matrix(9, 8, 13).reshaped({9, 1, 8});
  const Tensor v = random_matrix(9, 8, 14).reshaped({9, 1, 8});
  cpu::kv_store(k, v, positions_from(0, 9), cache.view);
  // Position 6 lives in slot 2 of logical block 1, which the table maps to physical block 1.
  const int32_t block = cache.view.block_table.data_as<const int32_t>()[1];
  const uint16_t* stored = cache.view.k_blocks.data_as<const uint16_t>() + (block * 4 + 2) * 8;
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(stored[i], float_to_bf16(k.data_as<const float>()[6 * 8 + i])) << "element " << i;
  }
}

TEST(CpuKernels, F16KvCacheStoresRoundedValues) {
  PagedCache cache(DType::F16, 9, 1, 8, 4);
  const Tensor k = random_matrix(9, 8, 15).reshaped({9, 1, 8});
  const Tensor v = random_matrix(9, 8, 16).reshaped({9, 1, 8});
  cpu::kv_store(k, v, positions_from(0, 9), cache.view);
  const int32_t block = cache.view.block_table.data_as<const int32_t>()[1];
  const uint16_t* stored = cache.view.v_blocks.data_as<const uint16_t>() + (block * 4 + 2) * 8;
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(stored[i], float_to_fp16(v.data_as<const float>()[6 * 8 + i])) << "element " << i;
  }
}

// q8: per group of 32 (two groups of a 64-wide head), scale = max|x| / 127 and the int8 values
// round x / scale to nearest; read back, every value is within half a step of what was stored.
TEST(CpuKernels, Q8KvCacheStoresScaledInt8Values) {
  constexpr int64_t kHeadDim = 64, kGroup = 32;
  ASSERT_EQ(kv_q8_group(kHeadDim), kGroup);
  PagedCache cache(DType::I8, 9, 2, kHeadDim, 4);
  const Tensor k = random_matrix(9, 2 * kHeadDim, 17).reshaped({9, 2, kHeadDim});
  const Tensor v = random_matrix(9, 2 * kHeadDim, 18).reshaped({9, 2, kHeadDim});
  cpu::kv_store(k, v, positions_from(0, 9), cache.view);
  const int32_t block = cache.view.block_table.data_as<const int32_t>()[1];
  const int64_t slot = block * 4 + 2;                    // position 6
  for (int64_t g = 0; g < 2 * kHeadDim / kGroup; ++g) {  // the token's 4 groups (2 heads)
    const float* x = k.data_as<const float>() + 6 * 2 * kHeadDim + g * kGroup;
    float max_abs = 0;
    for (int64_t i = 0; i < kGroup; ++i)
      max_abs = std::max(max_abs, std::fabs(x[i]));
    const float scale = cache.view.k_scales.data_as<const float>()[slot * 4 + g];
    EXPECT_EQ(scale, max_abs / 127.0f) << "group " << g;
    const int8_t* q =
        cache.view.k_blocks.data_as<const int8_t>() + slot * 2 * kHeadDim + g * kGroup;
    for (int64_t i = 0; i < kGroup; ++i) {
      EXPECT_EQ(q[i], int8_t(std::nearbyint(x[i] / scale))) << "group " << g << " element " << i;
      EXPECT_LE(std::fabs(q[i] * scale - x[i]), 0.5f * scale * (1 + 1e-6f));
    }
  }
}

TEST(CpuKernels, BackendLevelsPreferTheirKvDtype) {
  for (Isa isa : cpu::supported_isas()) {
    const auto backend = make_cpu_backend(1, isa);
    EXPECT_EQ(backend->preferred_kv_dtype(), isa == Isa::Reference ? DType::F32 : DType::BF16)
        << cpu::isa_name(isa);
    // --kv-dtype overrides the level's default; dtypes the ops cannot store are an error.
    EXPECT_EQ(make_cpu_backend(1, isa, DType::F16)->preferred_kv_dtype(), DType::F16);
    test::expect_error([&] { make_cpu_backend(1, isa, DType::I32); }, {"KV cache", "I32"});
  }
  EXPECT_TRUE(cpu::isa_supported(cpu::best_isa()));
  test::expect_error([] { cpu::parse_isa("sse9"); }, {"sse9", "avx512"});
}

}  // namespace
}  // namespace llamaq
