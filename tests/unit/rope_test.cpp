// RoPE against the float32 test vectors of specs §4.4 (transformers 5.17, VERIFIED-RUN).
#include <cmath>

#include "backend/backend.h"
#include "model/rope.h"
#include "test_util.h"

namespace llamaq {
namespace {

LlamaConfig rope_config(int64_t head_dim, double factor) {
  LlamaConfig c;
  c.head_dim = head_dim;
  c.rope_theta = 500000.0;
  if (factor > 0) {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = factor;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
  }
  return c;
}

// The spec quotes 9 significant digits; fp32 pow/division may differ from torch by an ulp.
void expect_close(float actual, double expected) {
  EXPECT_NEAR(actual, expected, std::abs(expected) * 2e-7) << "expected " << expected;
}

TEST(Rope, Llama31InverseFrequencies) {
  const auto f = rope_inv_freq(rope_config(128, 8.0));
  ASSERT_EQ(f.size(), 64u);
  expect_close(f[0], 1.0);
  expect_close(f[1], 0.814617217);
  expect_close(f[28], 0.00321144611);
  const double medium[] = {0.00216657063, 0.00137189368, 0.00085675146,
                           0.000524846022, 0.00031269365, 0.000178507791};
  for (int i = 0; i < 6; ++i) expect_close(f[size_t(29 + i)], medium[i]);
  expect_close(f[35], 9.55621217e-05);
  expect_close(f[63], 3.06892588e-07);
}

TEST(Rope, Llama32InverseFrequencies) {
  const auto f = rope_inv_freq(rope_config(64, 32.0));
  ASSERT_EQ(f.size(), 32u);
  expect_close(f[15], 0.00129054801);
  expect_close(f[16], 0.000429556705);
  expect_close(f[17], 9.70828623e-05);
  expect_close(f[18], 1.94616387e-05);
  expect_close(f[31], 9.41830649e-08);
}

// Rotating the unit vector e_j by the backend op gives cos at j and sin at j + D/2.
std::vector<float> rotate_unit(const LlamaConfig& c, int32_t position, int64_t j) {
  auto backend = make_cpu_backend(1);
  const int64_t d = c.head_dim;
  Tensor x = backend->alloc(DType::F32, {1, 1, d});
  x.data_as<float>()[j] = 1.0f;
  Tensor pos = backend->alloc(DType::I32, {1});
  pos.data_as<int32_t>()[0] = position;
  const auto inv_freq = rope_inv_freq(c);
  Tensor freq = backend->alloc(DType::F32, {d / 2});
  backend->copy_from_host(freq, inv_freq.data());
  backend->rope(x, pos, freq);
  return {x.data_as<float>(), x.data_as<float>() + d};
}

TEST(Rope, CosAndSinAtPositionsMatchTransformers) {
  const LlamaConfig c31 = rope_config(128, 8.0);
  const double cos_1[] = {0.5403023362159729, 0.6861469149589539, 0.7877790927886963,
                          0.8574098348617554};
  for (int j = 0; j < 4; ++j) expect_close(rotate_unit(c31, 1, j)[size_t(j)], cos_1[j]);
  // sin[124..127] at position 100000 = sin of the angle of frequency 60..63: rotating e_j puts
  // sin(theta_j) at index j + 64.
  const double sin_scaled[] = {0.05674038827419281, 0.04623005539178848, 0.03766431659460068,
                               0.030684441328048706};
  const double sin_plain[] = {0.438713937997818, 0.361589640378952, 0.29684385657310486,
                              0.24305500090122223};
  const LlamaConfig c30 = rope_config(128, 0);
  for (int i = 0; i < 4; ++i) {
    // fp32 angles near 6e4 rad carry an absolute error of ~4e-3 ulp-scale; the spec's values
    // come from the same fp32 product, so agreement is to ~1e-5 absolute.
    EXPECT_NEAR(rotate_unit(c31, 100000, 60 + i)[size_t(124 + i)], sin_scaled[i], 1e-5);
    EXPECT_NEAR(rotate_unit(c30, 100000, 60 + i)[size_t(124 + i)], sin_plain[i], 1e-5);
  }
}

}  // namespace
}  // namespace llamaq
