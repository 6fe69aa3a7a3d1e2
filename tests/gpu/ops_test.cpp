// Row-wise and element-wise CUDA ops against the CPU reference on odd sizes: embedding, RMSNorm,
// RoPE, SwiGLU, the residual add. Bounds: the ops that only move or widen data (embedding) and
// the ones that round each step as the CPU does (add, RoPE: products and sums rounded one by one)
// must match exactly or within an ulp; RMSNorm and SwiGLU differ only in the summation order of
// a double sum or in expf's last bit, so 1e-6 relative is tens of times above what fp32 gives.
#include <fmt/format.h>

#include <cmath>

#include "gpu_test_support.h"

namespace llamaq {
namespace {

using gpu_test::GpuTest;
using gpu_test::host_values;
using gpu_test::relative_error;

constexpr double kFp32OpTolerance = 1e-6;
const int64_t kTokenCounts[] = {1, 7, 97, 1025};

class CudaOps : public GpuTest {
 protected:
  std::mt19937 rng{1234};
};

// Widths 97 (element loads) and 4096 (16-byte loads), tables in device memory and in pinned host
// memory (upload_embedding: the CUDA backend's default for the token embedding).
TEST_F(CudaOps, EmbeddingWidensRowsExactly) {
  for (DType dtype : {DType::BF16, DType::F16, DType::F32})
    for (const int64_t d : {97, 4096})
      for (const bool pinned : {false, true}) {
        SCOPED_TRACE(
            fmt::format("{} d={} {}", dtype_name(dtype), d, pinned ? "pinned host" : "device"));
        const Tensor table = gpu_test::random_tensor(dtype, {1001, d}, rng);
        const Tensor table_gpu = pinned ? gpu().upload_embedding(table) : gpu().upload(table);
        for (int64_t n : kTokenCounts) {
          std::vector<int32_t> ids(static_cast<size_t>(n));
          for (auto& id : ids)
            id = int32_t(rng() % 1001);
          const Tensor ids_host = gpu_test::int_tensor(ids);
          Tensor want = cpu().alloc(DType::F32, {n, d});
          cpu().embedding(table, ids_host, want);
          Tensor got = gpu_test::poisoned(gpu(), {n, d});
          gpu().embedding(table_gpu, gpu().upload(ids_host), got);
          EXPECT_EQ(host_values(gpu(), got), host_values(gpu(), want)) << "n=" << n;
        }
      }
}

TEST_F(CudaOps, EmbeddingReportsAnOutOfRangeIdAtTheNextSynchronization) {
  const Tensor table = gpu().upload(gpu_test::random_tensor(DType::BF16, {10, 8}, rng));
  Tensor out = gpu().alloc(DType::F32, {3, 8});
  gpu().embedding(table, gpu().upload(gpu_test::int_tensor({1, 10, 2})), out);
  std::vector<float> host(24);
  try {
    gpu().copy_to_host(out, host.data());
    ADD_FAILURE() << "an out-of-range id was not reported";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("embedding"), std::string::npos) << message;
    EXPECT_NE(message.find("token id 10 is out of range [0, 10)"), std::string::npos) << message;
  }
  gpu().copy_to_host(out, host.data());  // reported once; the backend stays usable
  EXPECT_EQ(host[8], 0.0f);              // the bad row is zero
}

TEST_F(CudaOps, RmsnormMatchesTheCpu) {
  // 12 and 4096: the register-cached kernel (mostly idle threads / every thread full); 97 (not a
  // multiple of 4) and 8192 (wider than the cache): the generic kernel.
  for (DType dtype : {DType::BF16, DType::F16, DType::F32}) {
    for (int64_t d : {12, 97, 4096, 8192}) {
      const Tensor weight = gpu_test::random_tensor(dtype, {d}, rng);
      for (int64_t n : kTokenCounts) {
        const Tensor x = gpu_test::random_tensor(DType::F32, {n, d}, rng, 3.0f);
        Tensor want = cpu().alloc(DType::F32, {n, d});
        cpu().rmsnorm(x, weight, 1e-5f, want);
        Tensor got = gpu_test::poisoned(gpu(), {n, d});
        gpu().rmsnorm(gpu().upload(x), gpu().upload(weight), 1e-5f, got);
        const double error = relative_error(host_values(gpu(), got), host_values(gpu(), want));
        EXPECT_LE(error, kFp32OpTolerance) << dtype_name(dtype) << " d=" << d << " n=" << n;
        RecordProperty("rmsnorm_error_d" + std::to_string(d) + "_n" + std::to_string(n),
                       std::to_string(error));
      }
    }
  }
}

TEST_F(CudaOps, RopeMatchesTheCpu) {
  for (int64_t head_dim : {16, 64, 128}) {
    std::vector<float> freq(size_t(head_dim / 2));
    for (size_t j = 0; j < freq.size(); ++j) {
      freq[j] = float(std::pow(500000.0, -2.0 * double(j) / double(head_dim)));
    }
    Tensor inv_freq = Tensor::zeros(DType::F32, {head_dim / 2});
    std::copy(freq.begin(), freq.end(), inv_freq.data_as<float>());
    for (int64_t n : kTokenCounts) {
      Tensor x = gpu_test::random_tensor(DType::F32, {n, 3, head_dim}, rng);
      std::vector<int32_t> positions(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        positions[size_t(i)] = int32_t(5000 + 3 * i);
      const Tensor pos = gpu_test::int_tensor(positions);
      Tensor got = gpu().upload(x);
      gpu().rope(got, gpu().upload(pos), gpu().upload(inv_freq));
      cpu().rope(x, pos, inv_freq);
      const double error = relative_error(host_values(gpu(), got), host_values(gpu(), x));
      EXPECT_LE(error, kFp32OpTolerance) << "head_dim " << head_dim << " n=" << n;
    }
  }
}

TEST_F(CudaOps, SwigluAndAddMatchTheCpu) {
  for (int64_t n : kTokenCounts) {
    const Tensor gate = gpu_test::random_tensor(DType::F32, {n, 353}, rng, 8.0f);
    const Tensor up = gpu_test::random_tensor(DType::F32, {n, 353}, rng, 2.0f);
    Tensor want = cpu().alloc(DType::F32, {n, 353});
    cpu().swiglu(gate, up, want);
    Tensor got = gpu().upload(gate);
    gpu().swiglu(got, gpu().upload(up), got);  // in place, as the model calls it
    EXPECT_LE(relative_error(host_values(gpu(), got), host_values(gpu(), want)), kFp32OpTolerance)
        << "swiglu n=" << n;

    Tensor sum = gpu().upload(gate);
    gpu().add_inplace(sum, gpu().upload(up));
    Tensor sum_cpu = Tensor::zeros(DType::F32, {n, 353});
    std::copy_n(gate.data_as<const float>(), gate.numel(), sum_cpu.data_as<float>());
    cpu().add_inplace(sum_cpu, up);
    EXPECT_EQ(host_values(gpu(), sum), host_values(gpu(), sum_cpu)) << "add n=" << n;
  }
}

TEST_F(CudaOps, MismatchedShapesAreErrorsNamingTheOp) {
  Tensor x = gpu().alloc(DType::F32, {4, 8});
  const Tensor y = gpu().alloc(DType::F32, {4, 9});
  try {
    gpu().add_inplace(x, y);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_inplace"), std::string::npos) << e.what();
  }
  const Tensor host = Tensor::zeros(DType::F32, {4, 8});
  Tensor out = gpu().alloc(DType::F32, {4, 8});
  EXPECT_THROW(gpu().rmsnorm(host, gpu().alloc(DType::F32, {8}), 1e-5f, out), Error);
}

}  // namespace
}  // namespace llamaq
