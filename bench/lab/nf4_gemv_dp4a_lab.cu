// Design study, step 2 of the one-token NF4 GEMV (docs/perf.md): decode the 4-bit codes in
// registers, without a shared-memory table, and multiply with int8 activations through dp4a.
// Standalone, not part of the CMake build; the kernel that wins moves into src/backend/cuda.
//   nvcc -O3 -arch=sm_90 -std=c++17 bench/lab/nf4_gemv_dp4a_lab.cu -o dp4a_lab && ./dp4a_lab
//
// Decoding: the code book as int8, q = round(127 * code), split into its non-positive half
// (codes 0..7, stored negated: 0..127) and its non-negative half (codes 8..15). One PRMT looks up
// four 4-bit codes at once in an 8-byte half table; a selector nibble with bit 3 set makes PRMT
// replicate the sign of the byte it picks, which is 0 in both half tables, so a code from the
// other half reads as 0. Per 8 weights: 1 XOR, 2 shifts, 4 PRMT, 4 DP4A.
// Activations: each lane quantizes its own 32-column chunks of x to int8 (scale max|x| / 127).
// Memory: each lane streams 16-byte loads, kStages rows ahead, in a register ring.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
  uint32_t neg_lo, neg_hi, pos_lo, pos_hi;  // int8 half tables
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

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

__device__ __forceinline__ uint4 stream16(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t pack4(int a, int b, int c, int d) {
  return (uint32_t(a) & 0xff) | ((uint32_t(b) & 0xff) << 8) | ((uint32_t(c) & 0xff) << 16) |
         (uint32_t(d) << 24);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// kDecode false: the same loop without decoding (a bound; wrong results by design).
// kEarly: the weight loads of the first kStages rows go out before x is read. kPdl: launched with
// programmatic stream serialization; lets the next kernel start at once and waits for the
// previous one only before reading x.
template <int kChunks, int kStages, bool kDecode, bool kEarly = false, bool kPdl = false>
__global__ void __launch_bounds__(256)
    dp4a_kernel(P p, const float* __restrict__ x, float* __restrict__ out, int rows_per_pass) {
  extern __shared__ float shared[];
  float* nmap = shared;           // [256]
  float* partial = shared + 256;  // [iterations * rows_per_pass][warps_per_row]
  const int tpr = p.cols / (32 * kChunks);
  const int warps_per_row = tpr / 32;
  const int rip = threadIdx.x / tpr;
  const int col0 = (threadIdx.x % tpr) * 32 * kChunks;
  if (kPdl) asm volatile("griddepcontrol.launch_dependents;");
  const int groups = (p.rows + rows_per_pass - 1) / rows_per_pass;
  const int iters =
      int(blockIdx.x) < groups ? (groups - int(blockIdx.x) + gridDim.x - 1) / gridDim.x : 0;
  auto row_of = [&](int i) { return (int(blockIdx.x) + i * int(gridDim.x)) * rows_per_pass + rip; };
  uint4 ring[kStages][kChunks];
  uint32_t ring_code[kStages];
  float ring_nest[kStages];
  auto issue = [&](int slot, int i) {
    const int row = min(row_of(i), p.rows - 1);
    const int64_t k = int64_t(row) * p.cols + col0;
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
      ring[slot][c] = stream16(p.packed + k / 2 + 16 * c);
    const unsigned block = unsigned(k >> 6);
    ring_code[slot] = __ldg(p.codes + block);
    ring_nest[slot] = __ldg(p.nested + (block >> 8));
  };
  if (kEarly) {
#pragma unroll
    for (int s = 0; s < kStages; ++s)
      if (s < iters) issue(s, s);
  }
  if (kPdl) asm volatile("griddepcontrol.wait;" ::: "memory");
  for (int i = threadIdx.x; i < 256; i += blockDim.x)
    nmap[i] = p.nmap[i];
  // Quantize this lane's chunks of x.
  uint32_t xq[kChunks][8];
  float da[kChunks];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    float v[32];
    const float4* src = reinterpret_cast<const float4*>(x + col0 + 32 * c);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float4 f = __ldg(src + i);
      v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i)
      amax = fmaxf(amax, fabsf(v[i]));
    da[c] = amax / 127.f;
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    int q[32];
#pragma unroll
    for (int i = 0; i < 32; ++i)
      q[i] = __float2int_rn(v[i] * inv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      xq[c][2 * j] = pack4(q[8 * j + 1], q[8 * j], q[8 * j + 3], q[8 * j + 2]);
      xq[c][2 * j + 1] = pack4(q[8 * j + 5], q[8 * j + 4], q[8 * j + 7], q[8 * j + 6]);
    }
  }
  __syncthreads();

  if (!kEarly) {
#pragma unroll
    for (int s = 0; s < kStages; ++s)
      if (s < iters) issue(s, s);
  }
  for (int base = 0; base < iters; base += kStages) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const int i = base + s;
      if (i >= iters) break;
      uint4 w[kChunks];
#pragma unroll
      for (int c = 0; c < kChunks; ++c)
        w[c] = ring[s][c];
      const uint32_t code = ring_code[s];
      const float nest = ring_nest[s];
      if (i + kStages < iters) issue(s, i + kStages);
      float dot = 0.f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const uint32_t words[4] = {w[c].x, w[c].y, w[c].z, w[c].w};
        int pos = 0, neg = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t wv = words[j];
          if (kDecode) {
            const uint32_t t = wv ^ 0x88888888u;
            neg = __dp4a(int(prmt(p.neg_lo, p.neg_hi, wv)), int(xq[c][2 * j]), neg);
            neg = __dp4a(int(prmt(p.neg_lo, p.neg_hi, wv >> 16)), int(xq[c][2 * j + 1]), neg);
            pos = __dp4a(int(prmt(p.pos_lo, p.pos_hi, t)), int(xq[c][2 * j]), pos);
            pos = __dp4a(int(prmt(p.pos_lo, p.pos_hi, t >> 16)), int(xq[c][2 * j + 1]), pos);
          } else {
            pos = __dp4a(int(wv), int(xq[c][2 * j]), pos);
          }
        }
        dot = fmaf(float(pos - neg), da[c], dot);
      }
      const float scale = __fadd_rn(__fmul_rn(nmap[code], nest), p.offset);
      const float sum = warp_sum(dot * scale);
      if (threadIdx.x % 32 == 0) {
        partial[(i * rows_per_pass + rip) * warps_per_row + (threadIdx.x % tpr) / 32] = sum;
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < iters * rows_per_pass; idx += blockDim.x) {
    const int i = idx / rows_per_pass, r = idx % rows_per_pass;
    const int row = (int(blockIdx.x) + i * int(gridDim.x)) * rows_per_pass + r;
    if (row >= p.rows) continue;
    float s = 0.f;
    for (int wi = 0; wi < warps_per_row; ++wi)
      s += partial[idx * warps_per_row + wi];
    out[row] = s * (1.f / 127.f);
  }
}

__global__ void empty_kernel() {}

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

// Mean time per launch over a back-to-back run of `count` launches (what a graph sees, roughly).
template <typename F>
float chain_us(F launch, int count = 64) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < count; ++i)
    launch();
  CK(cudaEventRecord(a));
  for (int i = 0; i < count; ++i)
    launch();
  CK(cudaEventRecord(b));
  CK(cudaEventSynchronize(b));
  float ms;
  CK(cudaEventElapsedTime(&ms, a, b));
  return ms * 1000 / count;
}

// Mean time per launch of `count` launches captured into one CUDA graph.
template <typename F>
float graph_us(F launch, int count = 64) {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < count; ++i)
    launch(s);
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 3; ++i)
    CK(cudaGraphLaunch(ge, s));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ts;
  for (int r = 0; r < 9; ++r) {
    CK(cudaEventRecord(a, s));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    ts.push_back(ms * 1000 / count);
  }
  std::sort(ts.begin(), ts.end());
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  CK(cudaStreamDestroy(s));
  return ts[ts.size() / 2];
}

int main() {
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const float nf4[16] = {-1.0f,       -0.6961928f, -0.5250731f, -0.3949175f,
                         -0.2844414f, -0.1847734f, -0.0910500f, 0.0f,
                         0.0795803f,  0.1609302f,  0.2461123f,  0.3379152f,
                         0.4407098f,  0.5626170f,  0.7229568f,  1.0f};
  uint8_t neg[8], pos[8];
  for (int i = 0; i < 8; ++i) {
    neg[i] = uint8_t(-int(std::lround(127 * nf4[i])));
    pos[i] = uint8_t(std::lround(127 * nf4[8 + i]));
  }
  uint32_t tables[4];
  memcpy(&tables[0], neg, 8);
  memcpy(&tables[2], pos, 8);
  std::vector<Case> cases = {{14336, 4096}, {4096, 14336},  {4096, 4096}, {6144, 4096},
                             {1024, 4096},  {128256, 4096}, {8192, 2048}, {2048, 8192}};
  printf("| kernel | shape | us single | us chain | GB/s | us graph | GB/s | rel err |\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  for (Case c : cases) {
    const size_t n = size_t(c.rows) * c.cols;
    const size_t blocks = n / 64;
    const int copies = std::max<int>(2, int(300e6 / (n / 2 + blocks)));
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
    std::vector<P> ps(copies);
    for (int i = 0; i < copies; ++i) {
      ps[i] = P{d_packed + i * n / 2,
                d_codes + i * blocks,
                d_nested,
                d_map,
                0.001f,
                {},
                tables[0],
                tables[1],
                tables[2],
                tables[3],
                c.rows,
                c.cols};
      memcpy(ps[i].table, nf4, sizeof nf4);
    }
    ref_kernel<<<(c.rows + 127) / 128, 128>>>(ps[0], d_x, d_ref);
    CK(cudaDeviceSynchronize());
    std::vector<float> ref(c.rows), got(c.rows);
    CK(cudaMemcpy(ref.data(), d_ref, c.rows * 4, cudaMemcpyDeviceToHost));
    const double bytes = n / 2 + blocks + c.cols * 4.0 + c.rows * 4.0;
    auto run = [&](const char* name, auto kernel, int chunks, bool pdl = false) {
      const int tpr = c.cols / (32 * chunks);
      if (tpr % 32 != 0 || tpr > 256) return;
      const int rpp = 256 / tpr;
      const int threads = tpr * rpp;
      int per_sm = 0;
      CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 16384));
      const int groups = (c.rows + rpp - 1) / rpp;
      const int grid = std::min(groups, per_sm * sms);
      const int iters = (groups + grid - 1) / grid;
      const size_t smem = 1024 + size_t(iters) * rpp * (tpr / 32) * 4;
      if (smem > 48 * 1024) return;
      int k = 0;
      auto launch_on = [&](cudaStream_t stream) {
        cudaLaunchConfig_t cfg = {};
        cfg.stream = stream;
        cfg.gridDim = grid;
        cfg.blockDim = threads;
        cfg.dynamicSmemBytes = smem;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = pdl ? 1 : 0;
        CK(cudaLaunchKernelEx(&cfg, kernel, ps[k], (const float*)d_x, d_out, rpp));
        k = (k + 1) % copies;
      };
      auto launch = [&] { launch_on(0); };
      float single = time_us(launch);
      float chain = chain_us(launch);
      float graph = graph_us(launch_on);
      CK(cudaGetLastError());
      kernel<<<grid, threads, smem>>>(ps[0], d_x, d_out, rpp);
      CK(cudaMemcpy(got.data(), d_out, c.rows * 4, cudaMemcpyDeviceToHost));
      double err = 0, mag = 0;
      for (int i = 0; i < c.rows; ++i) {
        err = std::max(err, double(std::fabs(got[i] - ref[i])));
        mag = std::max(mag, double(std::fabs(ref[i])));
      }
      printf("| %s (%d/SM, grid %d) | %dx%d | %.1f | %.1f | %.0f | %.1f | %.0f | %.2e |\n", name,
             per_sm, grid, c.rows, c.cols, single, chain, bytes / chain * 1e-3, graph,
             bytes / graph * 1e-3, err / mag);
    };
    run("dp4a c1 s8", dp4a_kernel<1, 8, true>, 1);
    run("dp4a c1 s8 early", dp4a_kernel<1, 8, true, true>, 1);
    run("dp4a c1 s8 early pdl", dp4a_kernel<1, 8, true, true, true>, 1, true);
    run("dp4a c2 s4 early pdl", dp4a_kernel<2, 4, true, true, true>, 2, true);
    run("dp4a c1 s4 early pdl", dp4a_kernel<1, 4, true, true, true>, 1, true);
    run("dp4a c2 s8 early", dp4a_kernel<2, 8, true, true>, 2);
    cudaFree(d_packed);
    cudaFree(d_codes);
    cudaFree(d_nested);
    cudaFree(d_map);
    cudaFree(d_x);
    cudaFree(d_out);
    cudaFree(d_ref);
  }
  {
    float us = chain_us([&] { empty_kernel<<<264, 256>>>(); });
    float gus = graph_us([&](cudaStream_t s) { empty_kernel<<<264, 256, 0, s>>>(); });
    printf("| empty kernel chain / graph | | %.2f | %.2f |\n", us, gus);
  }
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
