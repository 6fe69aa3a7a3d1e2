// kv_store and attention against the CPU reference over a paged cache whose block table is a
// shuffled permutation (so paging bugs show), for both CUDA paths (flash and split-KV) at every
// size, head dims 16/64/128, GQA groups 1/4, prefill from position 0 and chunks after earlier
// context. kv_store moves floats and must be exact; attention is fp32 with another summation
// order and an online softmax (rescaled partial sums): errors are ~1e-7; the fp32 bound 1e-4 leaves
// ample room while any masking, paging or GQA mistake gives errors of order 1 (the measured
// maximum is recorded as a test property).
#include <algorithm>
#include <numeric>

#include "backend/cuda/ops.h"
#include "gpu_test_support.h"

namespace llamaq {
namespace {

using gpu_test::host_values;
using gpu_test::relative_error;

constexpr double kAttentionTolerance = 1e-4;
constexpr int64_t kBlockSize = 16;

struct AttentionCase {
  int64_t n_heads;
  int64_t n_kv_heads;
  int64_t head_dim;
  int64_t start;  // tokens already in the cache
  int64_t n;      // new tokens (queries)
};

// A cache of `capacity` tokens whose blocks hold random keys/values, on the host and the GPU.
struct PagedCache {
  Tensor k_host, v_host, table_host;
  Tensor k_gpu, v_gpu, table_gpu;

  PagedCache(Backend& gpu, const AttentionCase& c, std::mt19937& rng) {
    const int64_t blocks = (c.start + c.n + kBlockSize - 1) / kBlockSize + 3;  // spare blocks
    k_host =
        gpu_test::random_tensor(DType::F32, {blocks, kBlockSize, c.n_kv_heads, c.head_dim}, rng);
    v_host =
        gpu_test::random_tensor(DType::F32, {blocks, kBlockSize, c.n_kv_heads, c.head_dim}, rng);
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
    for (cuda::AttentionPath path :
         {cuda::AttentionPath::Flash, cuda::AttentionPath::SplitKv, cuda::AttentionPath::Auto}) {
      Tensor got = gpu_test::poisoned(gpu(), {c.n, c.n_heads * c.head_dim});
      cuda::attention(gpu().context(), q_gpu, positions_gpu, cache.gpu_view(), got, path);
      const double error = relative_error(host_values(gpu(), got), expected);
      EXPECT_LE(error, kAttentionTolerance) << "path " << int(path);
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

TEST_F(CudaAttention, KvStoreWritesTheSameBlocksAsTheCpu) {
  for (int64_t n : {1, 7, 97, 1025}) {
    const AttentionCase c{8, 2, 64, 5, n};
    PagedCache cache(gpu(), c, rng_);
    const Tensor k = gpu_test::random_tensor(DType::F32, {n, c.n_kv_heads, c.head_dim}, rng_);
    const Tensor v = gpu_test::random_tensor(DType::F32, {n, c.n_kv_heads, c.head_dim}, rng_);
    const Tensor positions = gpu_test::int_tensor(positions_of(c));
    cpu().kv_store(k, v, positions, cache.host_view());
    gpu().kv_store(gpu().upload(k), gpu().upload(v), gpu().upload(positions), cache.gpu_view());
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
