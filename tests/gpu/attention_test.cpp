// kv_store and attention against the CPU reference over a paged cache whose block table is a
// shuffled permutation (so paging bugs show), for every CUDA path (tensor-core flash, fp32 flash,
// split-KV, naive) at every size, head dims 16/64/128, GQA groups 1/4, prefill from position 0 and
// chunks after earlier context, with an f32 and a bf16 cache. kv_store moves floats and must be
// exact. The fp32 paths (split-KV, fp32 flash) differ from the CPU only in summation order and the
// online softmax's rescaling: errors are ~1e-7, bound 1e-4. The tensor-core flash and the naive
// path round Q, K, V and the probabilities to bf16 (2^-9 relative each, independent) and
// accumulate in fp32: ~3e-3 expected, bound 1e-2. Any masking, paging or GQA mistake gives errors
// of order 1 (the measured maximum is recorded as a test property).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "backend/cuda/attention_kernels.h"
#include "backend/cuda/attention_naive.h"
#include "backend/cuda/ops.h"
#include "gpu_test_support.h"

namespace llamaq {
namespace {

using gpu_test::host_values;
using gpu_test::relative_error;

constexpr double kAttentionTolerance = 1e-4;
constexpr double kBf16AttentionTolerance = 1e-2;
constexpr int64_t kBlockSize = 16;

struct AttentionCase {
  int64_t n_heads;
  int64_t n_kv_heads;
  int64_t head_dim;
  int64_t start;  // tokens already in the cache
  int64_t n;      // new tokens (queries)
};

Tensor to_bf16(const Tensor& f32) {
  Tensor out = Tensor::zeros(DType::BF16, f32.shape());
  for (int64_t i = 0; i < f32.numel(); ++i)
    out.data_as<uint16_t>()[i] = float_to_bf16(f32.data_as<const float>()[i]);
  return out;
}

Tensor to_f32(const Tensor& bf16) {
  Tensor out = Tensor::zeros(DType::F32, bf16.shape());
  for (int64_t i = 0; i < bf16.numel(); ++i)
    out.data_as<float>()[i] = bf16_to_float(bf16.data_as<const uint16_t>()[i]);
  return out;
}

// A cache of `capacity` tokens whose blocks hold random keys/values (f32 or bf16), on the host and
// the GPU.
struct PagedCache {
  Tensor k_host, v_host, table_host;
  Tensor k_gpu, v_gpu, table_gpu;

  PagedCache(Backend& gpu, const AttentionCase& c, std::mt19937& rng, DType dtype = DType::F32) {
    const int64_t blocks = (c.start + c.n + kBlockSize - 1) / kBlockSize + 3;  // spare blocks
    k_host =
        gpu_test::random_tensor(DType::F32, {blocks, kBlockSize, c.n_kv_heads, c.head_dim}, rng);
    v_host =
        gpu_test::random_tensor(DType::F32, {blocks, kBlockSize, c.n_kv_heads, c.head_dim}, rng);
    if (dtype == DType::BF16) {
      k_host = to_bf16(k_host);
      v_host = to_bf16(v_host);
    }
    std::vector<int32_t> table(static_cast<size_t>(blocks));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    table_host = gpu_test::int_tensor(table);
    k_gpu = gpu.upload(k_host);
    v_gpu = gpu.upload(v_host);
    table_gpu = gpu.upload(table_host);
  }
  KvLayerView host_view() const { return {k_host, v_host, table_host, kBlockSize}; }
  KvLayerView gpu_view() const { return {k_gpu, v_gpu, table_gpu, kBlockSize}; }
};

std::vector<int32_t> positions_of(const AttentionCase& c) {
  std::vector<int32_t> positions(size_t(c.n));
  std::iota(positions.begin(), positions.end(), int32_t(c.start));
  return positions;
}

std::string describe(const AttentionCase& c) {
  return "heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) + " dim " +
         std::to_string(c.head_dim) + " start " + std::to_string(c.start) + " n " +
         std::to_string(c.n);
}

class CudaAttention : public gpu_test::GpuTest {
 protected:
  void check(const AttentionCase& c) {
    SCOPED_TRACE(describe(c));
    PagedCache cache(gpu(), c, rng_);
    const Tensor q = gpu_test::random_tensor(DType::F32, {c.n, c.n_heads, c.head_dim}, rng_, 2.0f);
    const Tensor positions = gpu_test::int_tensor(positions_of(c));
    Tensor want = cpu().alloc(DType::F32, {c.n, c.n_heads * c.head_dim});
    cpu().attention(q, positions, cache.host_view(), want);
    const auto expected = host_values(gpu(), want);
    const Tensor q_gpu = gpu().upload(q);
    const Tensor positions_gpu = gpu().upload(positions);
    const bool tensor_cores = cuda::attention_flash_mma_supported(int(c.head_dim));
    const std::pair<cuda::AttentionPath, double> paths[] = {
        {cuda::AttentionPath::Flash, tensor_cores ? kBf16AttentionTolerance : kAttentionTolerance},
        {cuda::AttentionPath::FlashFp32, kAttentionTolerance},
        {cuda::AttentionPath::SplitKv, kAttentionTolerance},
        {cuda::AttentionPath::Naive, kBf16AttentionTolerance},
        {cuda::AttentionPath::Auto, kBf16AttentionTolerance}};
    std::vector<double> flash, naive;
    for (const auto& [path, bound] : paths) {
      Tensor got = gpu_test::poisoned(gpu(), {c.n, c.n_heads * c.head_dim});
      cuda::attention(gpu().context(), q_gpu, positions_gpu, cache.gpu_view(), got, path);
      const auto values = host_values(gpu(), got);
      const double error = relative_error(values, expected);
      EXPECT_LE(error, bound) << "path " << int(path);
      worst_ = std::max(worst_, error);
      if (path == cuda::AttentionPath::Flash) flash = values;
      if (path == cuda::AttentionPath::Naive) naive = values;
    }
    // The two bf16 implementations against each other: both within 1e-2 of the CPU.
    EXPECT_LE(relative_error(flash, naive), 2 * kBf16AttentionTolerance);
  }

  // Every kernel reading a bf16 cache, against the CPU on the same (bf16-rounded) keys and values.
  void check_bf16_cache(const AttentionCase& c) {
    SCOPED_TRACE("bf16 cache, " + describe(c));
    PagedCache cache(gpu(), c, rng_);
    const Tensor k16 = to_bf16(cache.k_host);
    const Tensor v16 = to_bf16(cache.v_host);
    const Tensor k_rounded = to_f32(k16);
    const Tensor v_rounded = to_f32(v16);
    const Tensor q = gpu_test::random_tensor(DType::F32, {c.n, c.n_heads, c.head_dim}, rng_, 2.0f);
    const Tensor positions = gpu_test::int_tensor(positions_of(c));
    Tensor want = cpu().alloc(DType::F32, {c.n, c.n_heads * c.head_dim});
    cpu().attention(q, positions, {k_rounded, v_rounded, cache.table_host, kBlockSize}, want);
    const auto expected = host_values(gpu(), want);
    const Tensor q_gpu = gpu().upload(q);
    const Tensor positions_gpu = gpu().upload(positions);
    const Tensor k_gpu = gpu().upload(k16);
    const Tensor v_gpu = gpu().upload(v16);
    enum class Kernel { Flash, FlashFp32, Naive, SplitKv };
    for (Kernel kernel : {Kernel::Flash, Kernel::FlashFp32, Kernel::Naive, Kernel::SplitKv}) {
      if (kernel == Kernel::Flash && !cuda::attention_flash_mma_supported(int(c.head_dim)))
        continue;
      Tensor got = gpu_test::poisoned(gpu(), {c.n, c.n_heads * c.head_dim});
      cuda::AttentionParams p{};
      p.q = q_gpu.data_as<const float>();
      p.positions = positions_gpu.data_as<const int32_t>();
      p.k_blocks = k_gpu.data();
      p.v_blocks = v_gpu.data();
      p.block_table = cache.table_gpu.data_as<const int32_t>();
      p.out = got.data_as<float>();
      p.n_tokens = int(c.n);
      p.n_heads = int(c.n_heads);
      p.n_kv_heads = int(c.n_kv_heads);
      p.group = int(c.n_heads / c.n_kv_heads);
      p.block_size = int(kBlockSize);
      p.head_dim = int(c.head_dim);
      p.scale = float(1.0 / std::sqrt(double(c.head_dim)));
      p.kv_element = cuda::KvElement::Bf16;
      // Split-KV and the fp32 flash kernel widen the (exact) bf16 cache values and stay in fp32:
      // the fp32 bound.
      double bound = kBf16AttentionTolerance;
      if (kernel == Kernel::Naive) {
        cuda::attention_naive(gpu().context(), p, int(cache.table_host.numel() * kBlockSize));
      } else if (kernel == Kernel::Flash) {
        cuda::launch_attention_flash_mma(p, gpu().context().stream());
      } else if (kernel == Kernel::FlashFp32) {
        cuda::launch_attention_flash(p, gpu().context().stream());
        bound = kAttentionTolerance;
      } else {
        constexpr int kSplits = 3;
        const int64_t items = c.n * c.n_heads * kSplits;
        Tensor partial_out = gpu().alloc(DType::F32, {items, c.head_dim});
        Tensor partial_stats = gpu().alloc(DType::F32, {items, 2});
        // No arrival counters: the separate combine kernel (the attention op's path, with the
        // merge in the last split's block, runs in check()).
        cuda::launch_attention_split_kv(
            p, {partial_out.data_as<float>(), partial_stats.data_as<float>(), kSplits, nullptr},
            gpu().context().stream());
        bound = kAttentionTolerance;
      }
      const double error = relative_error(host_values(gpu(), got), expected);
      EXPECT_LE(error, bound) << "kernel " << int(kernel);
      worst_ = std::max(worst_, error);
    }
  }

  void TearDown() override { RecordProperty("max_relative_error", std::to_string(worst_)); }

  std::mt19937 rng_{42};
  double worst_ = 0;
};

TEST_F(CudaAttention, PrefillFromTheStartMatchesTheCpu) {
  for (int64_t n : {1, 7, 97, 1025}) {
    check({8, 2, 128, 0, n});
    check({4, 4, 64, 0, n});
    check({2, 1, 16, 0, n});
  }
}

TEST_F(CudaAttention, ChunksAfterEarlierContextMatchTheCpu) {
  check({8, 2, 128, 37, 7});
  check({8, 2, 128, 1000, 1});   // decode over a long context
  check({32, 8, 128, 3000, 2});  // Llama 3 8B head layout, two decode queries
  check({2, 1, 16, 299, 1});
  check({4, 1, 64, 90, 97});
}

TEST_F(CudaAttention, Bf16CacheMatchesTheCpu) {
  for (int64_t n : {1, 7, 97, 1025}) {
    check_bf16_cache({8, 2, 128, 0, n});
    check_bf16_cache({4, 4, 64, 0, n});
    check_bf16_cache({2, 1, 16, 0, n});  // the fp32 flash kernel's head dims
  }
  check_bf16_cache({32, 8, 128, 3000, 2});
  check_bf16_cache({4, 1, 64, 90, 97});
}

// f32 stores move floats; bf16 stores round to nearest even on both sides: exact either way.
TEST_F(CudaAttention, KvStoreWritesTheSameBlocksAsTheCpu) {
  for (const DType dtype : {DType::F32, DType::BF16})
    for (int64_t n : {1, 7, 97, 1025}) {
      SCOPED_TRACE(dtype_name(dtype));
      const AttentionCase c{8, 2, 64, 5, n};
      PagedCache cache(gpu(), c, rng_, dtype);
      const Tensor k = gpu_test::random_tensor(DType::F32, {n, c.n_kv_heads, c.head_dim}, rng_);
      const Tensor v = gpu_test::random_tensor(DType::F32, {n, c.n_kv_heads, c.head_dim}, rng_);
      const Tensor positions = gpu_test::int_tensor(positions_of(c));
      cpu().kv_store(k, v, positions, cache.host_view());
      gpu().kv_store(gpu().upload(k), gpu().upload(v), gpu().upload(positions), cache.gpu_view());
      EXPECT_EQ(host_values(gpu(), cache.k_gpu), host_values(gpu(), cache.k_host)) << "n=" << n;
      EXPECT_EQ(host_values(gpu(), cache.v_gpu), host_values(gpu(), cache.v_host)) << "n=" << n;
    }
}

// rope_kv_store (one kernel) against the CPU's rope, rope and kv_store: RoPE rounds every product
// and sum as the CPU does and the store moves floats, so q, k and the cache must match exactly.
TEST_F(CudaAttention, RopeKvStoreMatchesTheCpusThreeOps) {
  for (const DType dtype : {DType::F32, DType::BF16})
    for (int64_t n : {1, 7, 97}) {
      SCOPED_TRACE(dtype_name(dtype));
      const AttentionCase c{8, 2, 64, 300, n};
      PagedCache cache(gpu(), c, rng_, dtype);
      Tensor q = gpu_test::random_tensor(DType::F32, {n, c.n_heads, c.head_dim}, rng_);
      Tensor k = gpu_test::random_tensor(DType::F32, {n, c.n_kv_heads, c.head_dim}, rng_);
      const Tensor v = gpu_test::random_tensor(DType::F32, {n, c.n_kv_heads, c.head_dim}, rng_);
      std::vector<float> freq(size_t(c.head_dim / 2));
      for (size_t j = 0; j < freq.size(); ++j)
        freq[j] = std::pow(500000.0f, -2.0f * float(j) / float(c.head_dim));
      Tensor inv_freq = Tensor::zeros(DType::F32, {c.head_dim / 2});
      std::memcpy(inv_freq.data(), freq.data(), freq.size() * sizeof(float));
      const Tensor positions = gpu_test::int_tensor(positions_of(c));
      Tensor q_gpu = gpu().upload(q), k_gpu = gpu().upload(k);
      gpu().rope_kv_store(q_gpu, k_gpu, gpu().upload(v), gpu().upload(positions),
                          gpu().upload(inv_freq), cache.gpu_view());
      cpu().rope(q, positions, inv_freq);
      cpu().rope(k, positions, inv_freq);
      cpu().kv_store(k, v, positions, cache.host_view());
      EXPECT_EQ(host_values(gpu(), q_gpu), host_values(gpu(), q)) << "q n=" << n;
      EXPECT_EQ(host_values(gpu(), k_gpu), host_values(gpu(), k)) << "k n=" << n;
      EXPECT_EQ(host_values(gpu(), cache.k_gpu), host_values(gpu(), cache.k_host)) << "n=" << n;
      EXPECT_EQ(host_values(gpu(), cache.v_gpu), host_values(gpu(), cache.v_host)) << "n=" << n;
    }
}

TEST_F(CudaAttention, UnsupportedHeadDimIsAnError) {
  const AttentionCase c{2, 1, 24, 0, 3};
  PagedCache cache(gpu(), c, rng_);
  const Tensor q = gpu().alloc(DType::F32, {3, 2, 24});
  Tensor out = gpu().alloc(DType::F32, {3, 48});
  EXPECT_THROW(
      gpu().attention(q, gpu().upload(gpu_test::int_tensor({0, 1, 2})), cache.gpu_view(), out),
      Error);
}

}  // namespace
}  // namespace llamaq
