// Design study for the one-token NF4 GEMV (docs/perf.md, "NF4 GEMV design study"): standalone
// kernels that try one layout each against an fp64 reference, timed with CUDA events (median of
// 50 after 10 warm-ups, weights rotated over copies larger than L2). Not part of the CMake build
// or the product: the kernel that wins moves into src/backend/cuda with tests. Build and run on
// the GPU machine:
//   nvcc -O3 -arch=sm_90 -std=c++17 bench/lab/nf4_gemv_lab.cu -o nf4_gemv_lab && ./nf4_gemv_lab
// (`./nf4_gemv_lab quick` times the first variants only, for ncu).
// Kernel modes: 0 bf16-pair table (LDS.32, f32 by shift/mask); 1 float2 table (LDS.64); 2 as 1
// with the table address from one PRMT; 3 the same loop without decoding (a bound, wrong
// results by design); 4 as 2, rows interleaved byte by byte, transposed warp reduction.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

struct P {
  const uint8_t* packed;
  const uint8_t* codes;  // [n_blocks] u8
  const float* nested;   // [n_blocks/256]
  const float* nmap;     // [256]
  float offset;
  float table[16];
  int rows, cols;
};

__device__ __forceinline__ float scale_of(const P& p, unsigned block, const float* nmap) {
  return __fadd_rn(__fmul_rn(nmap[__ldg(p.codes + block)], __ldg(p.nested + (block >> 8))),
                   p.offset);
}

__global__ void ref_kernel(P p, const float* x, float* out) {
  int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= p.rows) return;
  double acc = 0;
  for (int c = 0; c < p.cols; ++c) {
    int64_t k = int64_t(r) * p.cols + c;
    uint8_t b = p.packed[k / 2];
    int code = (k & 1) ? (b & 15) : (b >> 4);
    float s = scale_of(p, unsigned(k >> 6), p.nmap);
    acc += double(p.table[code] * s) * x[c];
  }
  out[r] = float(acc);
}

template <int kL2>
__device__ __forceinline__ uint4 ldw(const uint4* ptr) {
  uint4 v;
  if constexpr (kL2 == 256)
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
  else if constexpr (kL2 == 128)
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
  else
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
  return v;
}

// kMode 0: bf16x2 pair table (u32, 32 KB), f32 by shift/and. 1: float2 table (64 KB).
template <int kMode>
__host__ __device__ constexpr int table_bytes() {
  return kMode == 0 ? 256 * 32 * 4 : kMode == 3 ? 1024 : 256 * 32 * 8;
}  // 4: as 2

template <int kMode>
__device__ __forceinline__ void fill(const P& p, char* table, float* nmap, int threads) {
  __shared__ float codes[16];
  if (threadIdx.x < 16) codes[threadIdx.x] = p.table[threadIdx.x];
  for (int i = threadIdx.x; i < 256; i += threads)
    nmap[i] = p.nmap[i];
  __syncthreads();
  if constexpr (kMode == 3) {
  } else if constexpr (kMode == 0) {
    for (int i = threadIdx.x; i < 256 * 8; i += threads) {
      int byte = i / 8;
      __nv_bfloat162 v =
          __floats2bfloat162_rn(codes[byte & 15], codes[byte >> 4]);  // lo = even col
      // even column (high nibble) -> low half? keep: .x (low half) = low nibble value = odd col
      uint32_t u = *reinterpret_cast<uint32_t*>(&v);
      reinterpret_cast<uint4*>(table)[i] = make_uint4(u, u, u, u);
    }
  } else {
    for (int i = threadIdx.x; i < 256 * 16; i += threads) {
      int byte = i / 16;
      float hi = codes[byte >> 4], lo = codes[byte & 15];
      reinterpret_cast<float4*>(table)[i] = make_float4(hi, lo, hi, lo);
    }
  }
  __syncthreads();
}

// Even column value (a) and odd column value (b) of byte `v` (its row offset v*128 computed).
template <int kMode>
__device__ __forceinline__ void lookup(const char* lane_table, uint32_t row_off, float& a,
                                       float& b) {
  if constexpr (kMode == 3) {
    // no decode (lab bound): the offset's bits as two floats
    a = __uint_as_float(row_off);
    b = __uint_as_float(row_off << 4);
  } else if constexpr (kMode == 2) {
    // row_off = byte * 256 + lane * 8 (one PRMT); lane_table is the table base here.
    const float2 f = *reinterpret_cast<const float2*>(lane_table + row_off);
    a = f.x;
    b = f.y;
  } else if constexpr (kMode == 0) {
    uint32_t u = *reinterpret_cast<const uint32_t*>(lane_table + row_off);
    a = __uint_as_float(u & 0xffff0000u);  // high half: even column (high nibble)
    b = __uint_as_float(u << 16);
  } else {
    float2 f = *reinterpret_cast<const float2*>(lane_table + 2 * row_off);
    a = f.x;
    b = f.y;
  }
}

template <int kMode, int b>
__device__ __forceinline__ uint32_t byte_row(uint32_t w, uint32_t lane_base) {
  if constexpr (kMode >= 2) {
    // byte b of w into bits 8..15, lane * 8 (byte 0 of lane_base) below: one PRMT.
    return __byte_perm(w, lane_base, 0x5504u | (b << 4));
  } else {
    if constexpr (b == 0)
      return (w << 7) & 0x7f80u;
    else
      return (w >> (8 * b - 7)) & 0x7f80u;
  }
}

template <int kMode>
__device__ __forceinline__ float dot_word(uint32_t w, const char* lt, uint32_t lane_base,
                                          const float* xs) {
  float s0 = 0.f, s1 = 0.f, a, b;
  lookup<kMode>(lt, byte_row<kMode, 0>(w, lane_base), a, b);
  s0 = fmaf(a, xs[0], s0);
  s1 = fmaf(b, xs[1], s1);
  lookup<kMode>(lt, byte_row<kMode, 1>(w, lane_base), a, b);
  s0 = fmaf(a, xs[2], s0);
  s1 = fmaf(b, xs[3], s1);
  lookup<kMode>(lt, byte_row<kMode, 2>(w, lane_base), a, b);
  s0 = fmaf(a, xs[4], s0);
  s1 = fmaf(b, xs[5], s1);
  lookup<kMode>(lt, byte_row<kMode, 3>(w, lane_base), a, b);
  s0 = fmaf(a, xs[6], s0);
  s1 = fmaf(b, xs[7], s1);
  return s0 + s1;
}

// Block = cols/1024 warps (each a 1024-column slice; x in registers); grid-stride over tiles of
// kTR rows; loads of the next tile in flight while this one is computed.
template <int kMode, int kTR, int kL2, int kSlice>
__global__ void __launch_bounds__(kSlice == 512 ? 1024 : 512)
    slice_kernel(P p, const float* __restrict__ x, float* __restrict__ out) {
  extern __shared__ float4 smem4[];
  char* table = reinterpret_cast<char*>(smem4);
  float* nmap = reinterpret_cast<float*>(table + table_bytes<kMode>());
  float* partial = nmap + 256;  // [warps][kTR]
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kLaneCols = kSlice / 32;  // 32 (16-byte loads) or 16 (8-byte loads)
  const char* lt = kMode >= 2 ? table : table + lane * (kMode == 0 ? 4 : 8);
  const uint32_t lane_base = lane * 8;
  const int col0 = warp * kSlice + lane * kLaneCols;
  const int tiles = (p.rows + kTR - 1) / kTR;
  const size_t row_bytes = size_t(p.cols) / 2;
  const uint8_t* base = p.packed + col0 / 2;
  using Load = typename std::conditional<kLaneCols == 32, uint4, uint2>::type;
  struct Tile {
    Load w[kTR];
    uint32_t code[kTR];
    float nested[kTR];
  };
  auto load_tile = [&](int t, Tile& buf) {
#pragma unroll
    for (int r = 0; r < kTR; ++r) {
      int row = min(t * kTR + r, p.rows - 1);
      if constexpr (kLaneCols == 32) {
        buf.w[r] = ldw<kL2>(reinterpret_cast<const uint4*>(base + row * row_bytes));
      } else {
        buf.w[r] = __ldg(reinterpret_cast<const uint2*>(base + row * row_bytes));
      }
      const unsigned block = unsigned((int64_t(row) * p.cols + col0) >> 6);
      buf.code[r] = __ldg(p.codes + block);
      buf.nested[r] = __ldg(p.nested + (block >> 8));
    }
  };
  Tile cur;
  int t = blockIdx.x;
  if (t < tiles) load_tile(t, cur);  // in flight while the table is filled
  float xs[kLaneCols];
#pragma unroll
  for (int i = 0; i < kLaneCols / 4; ++i) {
    float4 v = reinterpret_cast<const float4*>(x + col0)[i];
    xs[4 * i] = v.x;
    xs[4 * i + 1] = v.y;
    xs[4 * i + 2] = v.z;
    xs[4 * i + 3] = v.w;
  }
  fill<kMode>(p, table, nmap, blockDim.x);
  for (; t < tiles; t += gridDim.x) {
    Tile nxt;
    const int tn = t + gridDim.x;
    if (tn < tiles) load_tile(tn, nxt);
    float acc[kTR];
    if constexpr (kMode == 4) {
      float a0[kTR], a1[kTR];
#pragma unroll
      for (int r = 0; r < kTR; ++r)
        a0[r] = a1[r] = 0.f;
#pragma unroll
      for (int j = 0; j < kLaneCols / 8; ++j) {
#pragma unroll
        for (int b = 0; b < 4; ++b) {
#pragma unroll
          for (int r = 0; r < kTR; ++r) {
            const uint32_t word = reinterpret_cast<const uint32_t*>(&cur.w[r])[j];
            const uint32_t off = __byte_perm(word, lane_base, 0x5504u | (b << 4));
            const float2 f = *reinterpret_cast<const float2*>(table + off);
            a0[r] = fmaf(f.x, xs[8 * j + 2 * b], a0[r]);
            a1[r] = fmaf(f.y, xs[8 * j + 2 * b + 1], a1[r]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kTR; ++r) {
        const float sc = __fadd_rn(__fmul_rn(nmap[cur.code[r]], cur.nested[r]), p.offset);
        acc[r] = (a0[r] + a1[r]) * sc;
      }
      // Transposed reduction: halve the rows per lane at each of the first log2(kTR) levels.
      int m = kTR;
      int o = 16;
#pragma unroll
      for (; m > 1; m /= 2, o /= 2) {
        const bool upper = (lane & o) != 0;
#pragma unroll
        for (int i = 0; i < m / 2; ++i) {
          const float send = upper ? acc[i] : acc[i + m / 2];
          const float keep = upper ? acc[i + m / 2] : acc[i];
          acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
      }
#pragma unroll
      for (; o > 0; o /= 2)
        acc[0] += __shfl_xor_sync(0xffffffffu, acc[0], o);
      constexpr int kLevels = kTR == 8 ? 3 : kTR == 4 ? 2 : kTR == 2 ? 1 : 0;
      constexpr int kWriterMask = (32 >> kLevels) - 1;
      if ((lane & kWriterMask) == 0) {
        int row_in_tile = 0;
#pragma unroll
        for (int l = 0; l < kLevels; ++l)
          row_in_tile = row_in_tile * 2 + ((lane >> (4 - l)) & 1);
        partial[warp * kTR + row_in_tile] = acc[0];
      }
    } else {
#pragma unroll
      for (int r = 0; r < kTR; ++r) {
        const float sc = __fadd_rn(__fmul_rn(nmap[cur.code[r]], cur.nested[r]), p.offset);
        float s = dot_word<kMode>(cur.w[r].x, lt, lane_base, xs) +
                  dot_word<kMode>(cur.w[r].y, lt, lane_base, xs + 8);
        if constexpr (kLaneCols == 32) {
          s += dot_word<kMode>(reinterpret_cast<const uint4&>(cur.w[r]).z, lt, lane_base, xs + 16) +
               dot_word<kMode>(reinterpret_cast<const uint4&>(cur.w[r]).w, lt, lane_base, xs + 24);
        }
        acc[r] = s * sc;
      }
#pragma unroll
      for (int r = 0; r < kTR; ++r) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
          acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
      }
      if (lane < kTR) {
        float v = acc[0];
#pragma unroll
        for (int r = 1; r < kTR; ++r)
          if (lane == r) v = acc[r];
        partial[warp * kTR + lane] = v;
      }
    }
    __syncthreads();
    if (threadIdx.x < kTR) {
      float s = 0.f;
      for (int w = 0; w < warps; ++w)
        s += partial[w * kTR + threadIdx.x];
      int row = t * kTR + threadIdx.x;
      if (row < p.rows) out[row] = s;
    }
    __syncthreads();
    cur = nxt;
  }
}

// ---------------------------------------------------------------------------------------------
struct Case {
  int rows, cols;
};

template <typename F>
float time_us(F launch, int iters = 50) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 10; ++i)
    launch();
  std::vector<float> ts;
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(a));
    launch();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    ts.push_back(ms * 1000);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && !strcmp(argv[1], "quick");
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const float nf4[16] = {-1.0f,       -0.6961928f, -0.5250731f, -0.3949175f,
                         -0.2844414f, -0.1847734f, -0.0910500f, 0.0f,
                         0.0795803f,  0.1609302f,  0.2461123f,  0.3379152f,
                         0.4407098f,  0.5626170f,  0.7229568f,  1.0f};
  std::vector<Case> cases = {
      {14336, 4096}, {4096, 14336}, {4096, 4096}, {6144, 4096}, {1024, 4096}};
  // A buffer that flushes L2 between timings is not used: the weights (30 MB) are below L2
  // (50 MB), so each case rotates over enough copies to exceed it.
  printf("| kernel | shape | us | GB/s |\n|---|---|---|---|\n");
  for (Case c : cases) {
    const size_t n = size_t(c.rows) * c.cols;
    const size_t blocks = n / 64;
    const int copies = std::max<int>(2, int(200e6 / (n / 2 + blocks)));
    std::vector<uint8_t> h_packed(n / 2), h_codes(blocks);
    std::vector<float> h_nested((blocks + 255) / 256), h_map(256), h_x(c.cols);
    srand(1);
    for (auto& b : h_packed)
      b = uint8_t(rand());
    for (auto& b : h_codes)
      b = uint8_t(rand());
    for (auto& v : h_nested)
      v = 0.01f + (rand() % 1000) * 1e-5f;
    for (int i = 0; i < 256; ++i)
      h_map[i] = (i - 128) / 128.0f;
    for (auto& v : h_x)
      v = (rand() % 2001 - 1000) * 1e-3f;
    std::vector<P> ps(copies);
    uint8_t *d_packed, *d_codes;
    float *d_nested, *d_map, *d_x, *d_out, *d_ref;
    CK(cudaMalloc(&d_packed, n / 2 * copies));
    CK(cudaMalloc(&d_codes, blocks * copies));
    CK(cudaMalloc(&d_nested, h_nested.size() * 4));
    CK(cudaMalloc(&d_map, 1024));
    CK(cudaMalloc(&d_x, c.cols * 4));
    CK(cudaMalloc(&d_out, c.rows * 4));
    CK(cudaMalloc(&d_ref, c.rows * 4));
    for (int i = 0; i < copies; ++i) {
      CK(cudaMemcpy(d_packed + i * n / 2, h_packed.data(), n / 2, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(d_codes + i * blocks, h_codes.data(), blocks, cudaMemcpyHostToDevice));
    }
    CK(cudaMemcpy(d_nested, h_nested.data(), h_nested.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_map, h_map.data(), 1024, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_x, h_x.data(), c.cols * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < copies; ++i) {
      ps[i] = P{
          d_packed + i * n / 2, d_codes + i * blocks, d_nested, d_map, 0.001f, {}, c.rows, c.cols};
      memcpy(ps[i].table, nf4, sizeof nf4);
    }
    ref_kernel<<<(c.rows + 127) / 128, 128>>>(ps[0], d_x, d_ref);
    CK(cudaDeviceSynchronize());
    std::vector<float> ref(c.rows), got(c.rows);
    CK(cudaMemcpy(ref.data(), d_ref, c.rows * 4, cudaMemcpyDeviceToHost));
    const double bytes = n / 2 + blocks + c.cols * 4.0 + c.rows * 4.0;
    auto run = [&](const char* name, auto kernel, int threads, size_t smem, int grid) {
      CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      int k = 0;
      float us = time_us([&] {
        kernel<<<grid, threads, smem>>>(ps[k], d_x, d_out);
        k = (k + 1) % copies;
      });
      CK(cudaGetLastError());
      kernel<<<grid, threads, smem>>>(ps[0], d_x, d_out);
      CK(cudaMemcpy(got.data(), d_out, c.rows * 4, cudaMemcpyDeviceToHost));
      double err = 0, mag = 0;
      for (int i = 0; i < c.rows; ++i) {
        err = std::max(err, double(std::fabs(got[i] - ref[i])));
        mag = std::max(mag, double(std::fabs(ref[i])));
      }
      printf("| %s | %dx%d | %.1f | %.0f | err %.2e |\n", name, c.rows, c.cols, us,
             bytes / us * 1e-3, err / mag);
    };
#define RUN(MODE, TR, L2, SLICE)                                                                \
  {                                                                                             \
    auto kern = slice_kernel<MODE, TR, L2, SLICE>;                                              \
    const int warps = c.cols / SLICE;                                                           \
    const int threads = warps * 32;                                                             \
    size_t smem = table_bytes<MODE>() + 1024 + warps * TR * 4;                                  \
    int per_sm = 0;                                                                             \
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));     \
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem));            \
    int tiles = (c.rows + TR - 1) / TR;                                                         \
    char name[64];                                                                              \
    snprintf(name, sizeof name, "slice%d m%d tr%d l2_%d (%d/SM)", SLICE, MODE, TR, L2, per_sm); \
    run(name, kern, threads, smem, std::min(tiles, per_sm* sms));                               \
  }
    RUN(4, 4, 0, 1024)
    RUN(4, 8, 0, 1024)
    if (!quick) {
      RUN(2, 4, 0, 1024)
      RUN(4, 2, 0, 1024)
      RUN(4, 4, 0, 512)
      RUN(4, 8, 0, 512)
    }
    cudaFree(d_packed);
    cudaFree(d_codes);
    cudaFree(d_nested);
    cudaFree(d_map);
    cudaFree(d_x);
    cudaFree(d_out);
    cudaFree(d_ref);
  }
  // copy roofline
  {
    size_t bytes = size_t(1) << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    float us = time_us([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 10);
    printf("| memcpy d2d 1 GiB | | %.1f | %.0f |\n", us, 2.0 * bytes / us * 1e-3);
  }
  return 0;
}
