#include "backend/cpu/fast_linear.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace llamaq::cpu {
namespace {

// Rows handed to one kernel call: their chunk scales (rows x in/64 floats) stay in L1.
constexpr int64_t kRowBlock = 16;

// The float32 scale of an NF4 block, as nf4::dequantize_rows decodes it.
float block_scale(const nf4::Nf4Weight& w, int64_t block) {
  if (!w.double_quant) return w.absmax.data_as<const float>()[block];
  const uint8_t code = w.absmax.data_as<const uint8_t>()[block];
  const float product = w.nested_map.data_as<const float>()[code] *
                        w.nested_absmax.data_as<const float>()[block / w.nested_block_size];
  return product + w.nested_offset;
}

// dw [n_rows, cols / 64]: the scale / 127 of every 64-chunk of rows [row_begin, +n_rows).
void chunk_scales(const nf4::Nf4Weight& w, int64_t row_begin, int64_t n_rows, float* dw) {
  const int64_t chunks = w.cols / kChunk;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t first = (row_begin + r) * w.cols;
    int64_t cached_block = -1;
    float cached = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t block = (first + c * kChunk) / w.block_size;
      if (block != cached_block) {
        cached_block = block;
        cached = block_scale(w, block) / 127.0f;
      }
      dw[r * chunks + c] = cached;
    }
  }
}

// One token's row: per 64-chunk, da = max|x| / 127 and q = round(x / da), even elements first.
void quantize_row(const float* x, int64_t cols, int8_t* q, float* scale, int32_t* bias) {
  for (int64_t c = 0; c < cols / kChunk; ++c) {
    const float* xc = x + c * kChunk;
    float amax = 0;
    for (int64_t i = 0; i < kChunk; ++i) amax = std::max(amax, std::fabs(xc[i]));
    const float da = amax / 127.0f;
    const float inv = da > 0 ? 1.0f / da : 0.0f;
    int8_t* qc = q + c * kChunk;
    int32_t sum = 0;
    for (int64_t j = 0; j < kChunk / 2; ++j) {
      qc[j] = int8_t(std::nearbyint(xc[2 * j] * inv));
      qc[j + kChunk / 2] = int8_t(std::nearbyint(xc[2 * j + 1] * inv));
      sum += qc[j] + qc[j + kChunk / 2];
    }
    scale[c] = da;
    bias[c] = -128 * sum;
  }
}

struct Nf4Job {
  const KernelTable& kernels;
  const nf4::Nf4Weight& w;
  const Q8Activations& x;
  const int8_t* codes;
  float* out;
};

void nf4_band(const Nf4Job& job, int64_t begin, int64_t end) {
  thread_local std::vector<float> dw;
  const int64_t chunks = job.w.cols / kChunk;
  dw.resize(size_t(kRowBlock * chunks));
  for (int64_t r0 = begin; r0 < end; r0 += kRowBlock) {
    const int64_t n_rows = std::min(kRowBlock, end - r0);
    chunk_scales(job.w, r0, n_rows, dw.data());
    Nf4Rows rows;
    rows.packed = job.w.packed.data_as<const uint8_t>();
    rows.cols = job.w.cols;
    rows.row_begin = r0;
    rows.n_rows = n_rows;
    rows.dw = dw.data();
    rows.codes = job.codes;
    job.kernels.nf4(rows, job.x, job.out, job.w.rows);
  }
}

struct Bf16Job {
  const KernelTable& kernels;
  const Tensor& w;
  const float* x;
  int64_t n_tokens;
  float* out;
};

}  // namespace

bool fast_linear_applies(const LinearWeight& w) {
  if (w.nf4) {
    const nf4::Nf4Weight& q = *w.nf4;
    bool codes_in_range = true;
    for (float code : q.code_table) codes_in_range = codes_in_range && std::fabs(code) <= 1.0f;
    return codes_in_range && q.cols % kChunk == 0 && q.block_size % kChunk == 0 &&
           q.packed.device() == Device::Cpu;
  }
  return w.weight.dtype() == DType::BF16 && w.weight.device() == Device::Cpu && w.weight.rank() == 2;
}

void nf4_int8_codes(const nf4::Nf4Weight& w, int8_t* codes) {
  for (int i = 0; i < nf4::kCodes; ++i) codes[i] = int8_t(std::nearbyint(127.0f * w.code_table[size_t(i)]));
}

Q8Activations quantize_activations(ThreadPool& pool, const float* x, int64_t n, int64_t cols,
                                   LinearScratch& scratch) {
  const int64_t chunks = cols / kChunk;
  scratch.q.resize(size_t(n * cols));
  scratch.scale.resize(size_t(n * chunks));
  scratch.bias.resize(size_t(n * chunks));
  struct Job {
    const float* x;
    int64_t cols, chunks;
    LinearScratch& s;
  } job{x, cols, chunks, scratch};
  pool.parallel_for(n, [&job](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      quantize_row(job.x + t * job.cols, job.cols, job.s.q.data() + t * job.cols,
                   job.s.scale.data() + t * job.chunks, job.s.bias.data() + t * job.chunks);
    }
  });
  return {n, cols, scratch.q.data(), scratch.scale.data(), scratch.bias.data()};
}

void fast_linear(ThreadPool& pool, const KernelTable& kernels, const Tensor& x, const LinearWeight& w,
                 Tensor& out, LinearScratch& scratch) {
  const int64_t n = x.dim(0);
  const int64_t in = w.in_features();
  const int64_t out_features = w.out_features();
  if (x.dim(1) != in || out.dim(0) != n || out.dim(1) != out_features) {
    fail("cpu linear: x {} and out {} do not fit weight [{}, {}]", shape_to_string(x.shape()),
         shape_to_string(out.shape()), out_features, in);
  }
  if (!fast_linear_applies(w)) fail("cpu fast linear: this weight needs the reference linear");
  float* ys = out.data_as<float>();
  if (w.nf4) {
    const Q8Activations q = quantize_activations(pool, x.data_as<const float>(), n, in, scratch);
    int8_t codes[nf4::kCodes];
    nf4_int8_codes(*w.nf4, codes);
    const Nf4Job job{kernels, *w.nf4, q, codes, ys};
    pool.parallel_for(
        out_features, [&job](int64_t begin, int64_t end) { nf4_band(job, begin, end); }, kRowBlock);
    return;
  }
  const Bf16Job job{kernels, w.weight, x.data_as<const float>(), n, ys};
  pool.parallel_for(
      out_features,
      [&job](int64_t begin, int64_t end) {
        job.kernels.bf16(job.w.data_as<const uint16_t>(), job.w.dim(1), begin, end - begin, job.x,
                         job.n_tokens, job.out, job.w.dim(0));
      },
      kRowBlock);
}

KernelTable kernels_for(Isa isa) {
  switch (isa) {
    case Isa::Portable:
      return portable_kernels();
#if defined(__x86_64__)
    case Isa::Avx2:
      return avx2_kernels();
    case Isa::Avx512:
      return avx512_kernels();
#endif
    default:
      fail("cpu: no fast kernels for instruction set {}", isa_name(isa));
  }
}

}  // namespace llamaq::cpu
