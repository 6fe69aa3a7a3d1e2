#include "backend/cpu/fast_linear.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace llamaq::cpu {
namespace {

// Rows handed to one kernel call: their chunk scales (rows x in/64 floats) stay in L1.
constexpr int64_t kRowBlock = 16;

// dw [n_rows, cols / 64]: the scale of every 64-chunk of rows [row_begin, +n_rows), decoded as
// nf4::dequantize_rows does. Runs once per 64 weights of every decode step, so: no division per
// chunk, and for the usual 64-weight blocks a branch-free loop per nested block.
void chunk_scales(const nf4::Nf4Weight& w, int64_t row_begin, int64_t n_rows, float* dw) {
  const int64_t total = n_rows * (w.cols / kChunk);
  const int64_t first_block = row_begin * w.cols / w.block_size;
  const float* plain = w.double_quant ? nullptr : w.absmax.data_as<const float>();
  if (w.block_size == kChunk && plain) {
    std::copy_n(plain + first_block, total, dw);
    return;
  }
  const uint8_t* codes = w.double_quant ? w.absmax.data_as<const uint8_t>() : nullptr;
  const float* nested_absmax = w.double_quant ? w.nested_absmax.data_as<const float>() : nullptr;
  const float* nested_map = w.double_quant ? w.nested_map.data_as<const float>() : nullptr;
  const auto scale_of = [&](int64_t block) {
    if (plain) return plain[block];
    const float product = nested_map[codes[block]] * nested_absmax[block / w.nested_block_size];
    return product + w.nested_offset;
  };
  if (w.block_size == kChunk) {
    for (int64_t i = 0; i < total;) {
      const int64_t block = first_block + i;
      const int64_t run = std::min(total - i, w.nested_block_size - block % w.nested_block_size);
      const float nested = nested_absmax[block / w.nested_block_size];
      for (int64_t j = 0; j < run; ++j)
        dw[i + j] = nested_map[codes[block + j]] * nested + w.nested_offset;
      i += run;
    }
    return;
  }
  const int64_t chunks_per_block = w.block_size / kChunk;
  int64_t block = first_block;
  int64_t chunk_in_block = (row_begin * w.cols % w.block_size) / kChunk;
  float scale = scale_of(block);
  for (int64_t i = 0; i < total; ++i) {
    dw[i] = scale;
    if (++chunk_in_block == chunks_per_block && i + 1 < total) {
      chunk_in_block = 0;
      scale = scale_of(++block);
    }
  }
}

// One token's row: per 64-chunk q = round(127 x / max|x|), even elements first, and the scale
// max|x| / 127 times the weights' 1 / 127 (so the kernels multiply by the raw block scale).
constexpr float kScaleOfBoth = 1.0f / (127.0f * 127.0f);

void quantize_row(const float* x, int64_t cols, int8_t* q, float* scale, int32_t* bias) {
  for (int64_t c = 0; c < cols / kChunk; ++c) {
    const float* xc = x + c * kChunk;
    float amax = 0;
    for (int64_t i = 0; i < kChunk; ++i)
      amax = std::max(amax, std::fabs(xc[i]));
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    int8_t* qc = q + c * kChunk;
    int32_t sum = 0;
    for (int64_t j = 0; j < kChunk / 2; ++j) {
      qc[j] = int8_t(std::nearbyint(xc[2 * j] * inv));
      qc[j + kChunk / 2] = int8_t(std::nearbyint(xc[2 * j + 1] * inv));
      sum += qc[j] + qc[j + kChunk / 2];
    }
    scale[c] = amax * kScaleOfBoth;
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
    for (float code : q.code_table)
      codes_in_range = codes_in_range && std::fabs(code) <= 1.0f;
    return codes_in_range && q.cols % kChunk == 0 && q.block_size % kChunk == 0 &&
           q.packed.device() == Device::Cpu;
  }
  return w.weight.dtype() == DType::BF16 && w.weight.device() == Device::Cpu &&
         w.weight.rank() == 2;
}

void nf4_int8_codes(const nf4::Nf4Weight& w, int8_t* codes) {
  for (int i = 0; i < nf4::kCodes; ++i)
    codes[i] = int8_t(std::nearbyint(127.0f * w.code_table[size_t(i)]));
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

void fast_linear(ThreadPool& pool, const KernelTable& kernels, const Tensor& x,
                 const LinearWeight& w, Tensor& out, LinearScratch& scratch) {
  const int64_t n = x.dim(0);
  const int64_t in = w.in_features();
  const int64_t out_features = w.out_features();
  check_linear_shapes(x, w, out);
  if (!fast_linear_applies(w)) fail("cpu fast linear: this weight needs the reference linear");
  float* ys = out.data_as<float>();
  if (w.nf4) {
    const Q8Activations q = quantize_activations(pool, x.data_as<const float>(), n, in, scratch);
    int8_t codes[nf4::kCodes];
    nf4_int8_codes(*w.nf4, codes);
    const Nf4Job job{kernels, *w.nf4, q, codes, ys};
    pool.parallel_for_chunks(out_features, kRowBlock,
                             [&job](int64_t begin, int64_t end) { nf4_band(job, begin, end); });
    return;
  }
  const Bf16Job job{kernels, w.weight, x.data_as<const float>(), n, ys};
  pool.parallel_for_chunks(out_features, kRowBlock, [&job](int64_t begin, int64_t end) {
    job.kernels.bf16(job.w.data_as<const uint16_t>(), job.w.dim(1), begin, end - begin, job.x,
                     job.n_tokens, job.out, job.w.dim(0));
  });
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
