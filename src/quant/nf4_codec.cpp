// NF4 quantization (bitsandbytes kQuantizeBlockwise semantics, optional double quantization of
// the block scales) and dequantization (kDequantizeBlockwise: one float32 multiply, then
// round-to-nearest-even to the weight's original dtype). Specs §1.2-§1.7.
#include "quant/nf4_codec.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace llamaq::nf4 {
namespace {

constexpr int64_t kMinBlocksPerTask = 64;
constexpr int64_t kDequantRowsPerTask = 16;

bool is_float_weight_dtype(DType dtype) {
  return dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32;
}

// Elements [begin, begin + count) of a host BF16/F16/F32 tensor, widened to float.
void widen(const Tensor& t, int64_t begin, int64_t count, float* out) {
  switch (t.dtype()) {
    case DType::BF16: {
      const uint16_t* in = t.data_as<const uint16_t>() + begin;
      for (int64_t i = 0; i < count; ++i) {
        out[i] = bf16_to_float(in[i]);
      }
      break;
    }
    case DType::F16: {
      const uint16_t* in = t.data_as<const uint16_t>() + begin;
      for (int64_t i = 0; i < count; ++i) {
        out[i] = fp16_to_float(in[i]);
      }
      break;
    }
    default:
      std::memcpy(out, t.data_as<const float>() + begin, size_t(count) * sizeof(float));
      break;
  }
}

// What a float32 value becomes when stored as `dtype` and read back (RNE, as torch's .to()).
float round_through(DType dtype, float value) {
  switch (dtype) {
    case DType::BF16:
      return bf16_to_float(float_to_bf16(value));
    case DType::F16:
      return fp16_to_float(float_to_fp16(value));
    default:
      return value;
  }
}

void check_quantize_input(const Tensor& weight, int64_t block_size) {
  if (weight.device() != Device::Cpu) fail("nf4 quantize: the weight must be a host tensor");
  if (weight.rank() != 2 || weight.numel() == 0) {
    fail("nf4 quantize: the weight must be a non-empty matrix, got shape {}",
         shape_to_string(weight.shape()));
  }
  if (!is_float_weight_dtype(weight.dtype())) {
    fail("nf4 quantize: weight dtype {} is not BF16, F16 or F32", dtype_name(weight.dtype()));
  }
  if (!valid_block_size(block_size)) {
    fail("nf4 quantize: block size {} is not one of bitsandbytes' 32, 64, ..., 4096", block_size);
  }
}

// A worker's scratch for one block: its values (widened, then scaled) and their codes.
struct BlockScratch {
  explicit BlockScratch(int64_t block_size)
      : values(size_t(block_size)), codes(size_t(block_size)) {}
  std::vector<float> values;
  std::vector<int32_t> codes;
};

// True when no value is inf or NaN (an integer test on the exponent bits, so it vectorizes).
bool all_finite(const float* values, int64_t count) {
  uint32_t non_finite = 0;
  for (int64_t i = 0; i < count; ++i) {
    non_finite |= uint32_t((std::bit_cast<uint32_t>(values[i]) & 0x7f800000u) == 0x7f800000u);
  }
  return non_finite == 0;
}

[[noreturn]] void fail_non_finite(const float* values, int64_t count, int64_t first_element,
                                  int64_t cols) {
  int64_t i = 0;
  while (i + 1 < count && std::isfinite(values[i]))
    ++i;
  const int64_t k = first_element + i;
  fail("nf4 quantize: weight element [{}, {}] is {}, which cannot be quantized", k / cols, k % cols,
       values[i]);
}

// max |v| of finite values, with four independent maxima (the order of a max does not matter).
float block_absmax(const float* values, int64_t count) {
  float m[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    for (int j = 0; j < 4; ++j)
      m[j] = std::max(m[j], std::fabs(values[i + j]));
  }
  for (; i < count; ++i)
    m[0] = std::max(m[0], std::fabs(values[i]));
  return std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
}

// codes[i] = encode(values[i] * inv): the number of thresholds strictly below the scaled value,
// counted one threshold at a time over the whole block so that the comparisons vectorize.
void encode_block(float* values, int64_t count, float inv, int32_t* codes) {
  for (int64_t i = 0; i < count; ++i) {
    values[i] *= inv;
    codes[i] = 0;
  }
  for (float threshold : kThresholds) {
    for (int64_t i = 0; i < count; ++i)
      codes[i] += int32_t(values[i] > threshold);
  }
}

void pack_codes(const int32_t* codes, int64_t count, uint8_t* bytes) {
  for (int64_t i = 0; i + 1 < count; i += 2)
    bytes[i / 2] = uint8_t(codes[i] << 4 | codes[i + 1]);
  if (count % 2) bytes[count / 2] = uint8_t(codes[count - 1] << 4);
}

// One block of `count` values (count even except for a partial last block) into count/2 rounded
// up bytes; returns the block's absmax. Codes follow the CUDA kernel (x * (1/absmax) against the
// thresholds), except for an all-zero block: the kernel's 0 * (1/0) = NaN gives code 0 (-1.0),
// which under double quantization dequantizes to -scale, not 0. Such a block gets code 7 (0.0)
// instead, as bitsandbytes' PyTorch backend does, so it dequantizes to 0 with any scale.
float quantize_block(BlockScratch& scratch, int64_t count, uint8_t* bytes) {
  const float absmax = block_absmax(scratch.values.data(), count);
  if (absmax == 0.0f) {
    constexpr int32_t kZeroCode = 7;
    static_assert(kCodebook[kZeroCode] == 0.0f);
    std::fill_n(scratch.codes.begin(), count, kZeroCode);
  } else {
    encode_block(scratch.values.data(), count, 1.0f / absmax, scratch.codes.data());
  }
  pack_codes(scratch.codes.data(), count, bytes);
  return absmax;
}

// Fills w.packed and returns the float32 absmax of every block.
std::vector<float> quantize_blocks(const Tensor& weight, Nf4Weight& w, ThreadPool& pool) {
  const int64_t n = w.elements();
  std::vector<float> absmax(size_t(w.blocks()));
  uint8_t* packed = w.packed.data_as<uint8_t>();
  pool.parallel_for(
      w.blocks(),
      [&](int64_t begin, int64_t end) {
        BlockScratch scratch(w.block_size);
        for (int64_t b = begin; b < end; ++b) {
          const int64_t first = b * w.block_size;
          const int64_t count = std::min(w.block_size, n - first);
          widen(weight, first, count, scratch.values.data());
          if (!all_finite(scratch.values.data(), count)) {
            fail_non_finite(scratch.values.data(), count, first, w.cols);
          }
          absmax[size_t(b)] = quantize_block(scratch, count, packed + first / 2);
        }
      },
      kMinBlocksPerTask);
  return absmax;
}

// The float32 mean torch's `absmax.mean()` approximates: an exactly (compensated) summed double
// mean rounded once to float32. The fixtures (and the golden vector) were made this way.
float float32_mean(const std::vector<float>& values) {
  double sum = 0.0;
  double compensation = 0.0;  // Neumaier summation: the low-order bits lost by `sum`
  for (float v : values) {
    const double t = sum + double(v);
    compensation +=
        std::fabs(sum) >= std::fabs(double(v)) ? (sum - t) + double(v) : (double(v) - t) + sum;
    sum = t;
  }
  return float((sum + compensation) / double(values.size()));
}

// Midpoints of adjacent dynamic-map entries in float32, as `(D[:-1] + D[1:]) / 2`.
const std::array<float, kNestedCodes - 1>& dynamic_map_midpoints() {
  static const std::array<float, kNestedCodes - 1> midpoints = [] {
    std::array<float, kNestedCodes - 1> m{};
    const auto& map = dynamic_map();
    for (size_t i = 0; i < m.size(); ++i)
      m[i] = (map[i] + map[i + 1]) / 2.0f;
    return m;
  }();
  return midpoints;
}

// Nearest dynamic-map index: the number of midpoints strictly below x (ties go down; NaN -> 0).
uint8_t encode_nested(float x) {
  const auto& midpoints = dynamic_map_midpoints();
  x = std::clamp(x, -1.0f, 1.0f);
  return uint8_t(std::lower_bound(midpoints.begin(), midpoints.end(), x) - midpoints.begin());
}

// bitsandbytes' compress_statistics: absmax - mean, 8-bit blockwise with the dynamic map.
void double_quantize(const std::vector<float>& absmax, Nf4Weight& w, ThreadPool& pool) {
  const int64_t n_blocks = int64_t(absmax.size());
  const int64_t n_nested = block_count(n_blocks, kNestedBlockSize);
  w.double_quant = true;
  w.nested_block_size = kNestedBlockSize;
  w.nested_offset = float32_mean(absmax);
  w.absmax = Tensor::zeros(DType::U8, {n_blocks});
  w.nested_absmax = Tensor::zeros(DType::F32, {n_nested});
  w.nested_map = Tensor::zeros(DType::F32, {kNestedCodes});
  std::memcpy(w.nested_map.data(), dynamic_map().data(), sizeof(float) * kNestedCodes);
  uint8_t* codes = w.absmax.data_as<uint8_t>();
  float* nested_absmax = w.nested_absmax.data_as<float>();
  pool.parallel_for(n_nested, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t first = j * kNestedBlockSize;
      const int64_t last = std::min(first + kNestedBlockSize, n_blocks);
      float block_max = 0.0f;
      for (int64_t i = first; i < last; ++i) {
        block_max = std::max(block_max, std::fabs(absmax[size_t(i)] - w.nested_offset));
      }
      nested_absmax[j] = block_max;
      const float inv = 1.0f / block_max;
      for (int64_t i = first; i < last; ++i) {
        codes[i] = encode_nested((absmax[size_t(i)] - w.nested_offset) * inv);
      }
    }
  });
}

void store_plain_absmax(const std::vector<float>& absmax, Nf4Weight& w) {
  w.double_quant = false;
  w.absmax = Tensor::zeros(DType::F32, {int64_t(absmax.size())});
  std::memcpy(w.absmax.data(), absmax.data(), absmax.size() * sizeof(float));
}

// Cheap structural checks of a weight before reading its tensors (no data is scanned).
void check_layout(const Nf4Weight& w) {
  const auto bad = [&](const char* what) { fail("nf4 weight [{}, {}]: {}", w.rows, w.cols, what); };
  if (w.rows <= 0 || w.cols <= 0) bad("empty shape");
  if (!valid_block_size(w.block_size)) bad("invalid block size");
  if (!is_float_weight_dtype(w.original_dtype)) bad("original dtype is not BF16, F16 or F32");
  if (w.packed.device() != Device::Cpu || w.absmax.device() != Device::Cpu) {
    bad("dequantization on the host needs host tensors");
  }
  if (!w.packed.data() || !w.absmax.data()) bad("packed data or absmax is missing");
  if (w.packed.dtype() != DType::U8 || w.packed.numel() != packed_bytes(w.elements())) {
    bad("packed data is not (rows*cols+1)/2 U8 bytes");
  }
  if (w.absmax.numel() != w.blocks()) bad("absmax does not hold one value per block");
  if (!w.double_quant) {
    if (w.absmax.dtype() != DType::F32) bad("plain absmax is not F32");
    return;
  }
  if (w.absmax.dtype() != DType::U8) bad("double-quantized absmax is not U8");
  if (w.nested_block_size <= 0) bad("invalid nested block size");
  if (w.nested_absmax.dtype() != DType::F32 ||
      w.nested_absmax.numel() != block_count(w.blocks(), w.nested_block_size)) {
    bad("nested_absmax is not F32 [ceil(blocks / nested_block_size)]");
  }
  if (w.nested_map.dtype() != DType::F32 || w.nested_map.numel() != kNestedCodes) {
    bad("nested_map is not F32 [256]");
  }
  if (w.nested_absmax.device() != Device::Cpu || w.nested_map.device() != Device::Cpu) {
    bad("dequantization on the host needs host tensors");
  }
  if (!w.nested_absmax.data() || !w.nested_map.data())
    bad("nested_absmax or nested_map is missing");
}

// Decodes block scales: absmax[b], or map[q[b]] * nested_absmax[b / 256] + offset, rounded after
// the product and after the sum as bitsandbytes does (the library is built with
// -ffp-contract=off, so no compiler fuses them into one fma).
class ScaleDecoder {
 public:
  explicit ScaleDecoder(const Nf4Weight& w)
      : double_quant_(w.double_quant),
        plain_(w.double_quant ? nullptr : w.absmax.data_as<const float>()),
        codes_(w.double_quant ? w.absmax.data_as<const uint8_t>() : nullptr),
        nested_absmax_(w.double_quant ? w.nested_absmax.data_as<const float>() : nullptr),
        nested_map_(w.double_quant ? w.nested_map.data_as<const float>() : nullptr),
        nested_block_size_(w.nested_block_size),
        offset_(w.nested_offset) {}

  float operator()(int64_t block) const {
    if (!double_quant_) return plain_[block];
    const float product = nested_map_[codes_[block]] * nested_absmax_[block / nested_block_size_];
    return product + offset_;
  }

 private:
  bool double_quant_;
  const float* plain_;
  const uint8_t* codes_;
  const float* nested_absmax_;
  const float* nested_map_;
  int64_t nested_block_size_;
  float offset_;
};

// Elements [begin, end) of the packed stream through a 16-entry table of finished values.
void decode_span(const uint8_t* packed, int64_t begin, int64_t end, const float* table,
                 float* out) {
  int64_t k = begin;
  if (k < end && (k & 1)) *out++ = table[packed[k++ >> 1] & 0x0F];
  const uint8_t* bytes = packed + (k >> 1);
  const int64_t pairs = (end - k) / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    out[2 * i] = table[bytes[i] >> 4];
    out[2 * i + 1] = table[bytes[i] & 0x0F];
  }
  k += 2 * pairs;
  if (k < end) out[2 * pairs] = table[packed[k >> 1] >> 4];
}

}  // namespace

Nf4Weight quantize(const Tensor& weight, bool double_quant, ThreadPool& pool, int64_t block_size) {
  check_quantize_input(weight, block_size);
  Nf4Weight w;
  w.rows = weight.dim(0);
  w.cols = weight.dim(1);
  w.block_size = block_size;
  w.quant_type = QuantType::Nf4;
  w.original_dtype = weight.dtype();
  std::copy(std::begin(kCodebook), std::end(kCodebook), w.code_table.begin());
  w.packed = Tensor::zeros(DType::U8, {packed_bytes(w.elements())});
  const std::vector<float> absmax = quantize_blocks(weight, w, pool);
  if (double_quant) {
    double_quantize(absmax, w, pool);
  } else {
    store_plain_absmax(absmax, w);
  }
  return w;
}

std::vector<float> block_scales(const Nf4Weight& w) {
  check_layout(w);
  const ScaleDecoder scale(w);
  std::vector<float> scales(size_t(w.blocks()));
  for (int64_t b = 0; b < w.blocks(); ++b)
    scales[size_t(b)] = scale(b);
  return scales;
}

HalfScales half_scales(const Nf4Weight& w) {
  const std::vector<float> scales = block_scales(w);
  float largest = 0;
  for (float s : scales)
    largest = std::max(largest, std::fabs(s));
  // 2^k * largest in [2^14, 2^15): below fp16's maximum (65504), above it by at most 2x.
  // (k is capped where 2^-k would leave float's range; such scales are zero in all but name.)
  const int k = largest > 0 ? std::min(14 - std::ilogb(largest), 100) : 0;
  HalfScales out;
  out.half = Tensor::zeros(DType::F16, {int64_t(scales.size())});
  out.unscale = std::ldexp(1.0f, -k);
  auto* half = out.half.data_as<uint16_t>();
  for (size_t b = 0; b < scales.size(); ++b)
    half[b] = float_to_fp16(std::ldexp(scales[b], k));
  return out;
}

void dequantize_rows(const Nf4Weight& w, int64_t row_begin, int64_t count, float* out) {
  check_layout(w);
  if (row_begin < 0 || count < 0 || row_begin + count > w.rows) {
    fail("nf4 dequantize_rows: rows [{}, {}) are outside the weight's {} rows", row_begin,
         row_begin + count, w.rows);
  }
  const int64_t begin = row_begin * w.cols;
  const int64_t end = (row_begin + count) * w.cols;
  const uint8_t* packed = w.packed.data_as<const uint8_t>();
  const ScaleDecoder scale(w);
  float table[kCodes];
  for (int64_t k = begin; k < end;) {
    const int64_t block = k / w.block_size;
    const int64_t block_end = std::min(end, (block + 1) * w.block_size);
    const float s = scale(block);
    for (int c = 0; c < kCodes; ++c)
      table[c] = round_through(w.original_dtype, w.code_table[c] * s);
    decode_span(packed, k, block_end, table, out + (k - begin));
    k = block_end;
  }
}

Tensor dequantize(const Nf4Weight& w, DType dtype, ThreadPool& pool) {
  check_layout(w);
  if (!is_float_weight_dtype(dtype)) {
    fail("nf4 dequantize: output dtype {} is not BF16, F16 or F32", dtype_name(dtype));
  }
  Tensor out = Tensor::zeros(dtype, {w.rows, w.cols});
  pool.parallel_for(
      w.rows,
      [&](int64_t begin, int64_t end) {
        std::vector<float> rows(size_t(std::min(kDequantRowsPerTask, end - begin) * w.cols));
        for (int64_t r = begin; r < end; r += kDequantRowsPerTask) {
          const int64_t count = std::min(kDequantRowsPerTask, end - r);
          const int64_t first = r * w.cols;
          const int64_t n = count * w.cols;
          if (dtype == DType::F32) {
            dequantize_rows(w, r, count, out.data_as<float>() + first);
            continue;
          }
          dequantize_rows(w, r, count, rows.data());
          uint16_t* dst = out.data_as<uint16_t>() + first;
          for (int64_t i = 0; i < n; ++i) {
            dst[i] = dtype == DType::BF16 ? float_to_bf16(rows[size_t(i)])
                                          : float_to_fp16(rows[size_t(i)]);
          }
        }
      },
      kDequantRowsPerTask);
  return out;
}

}  // namespace llamaq::nf4
