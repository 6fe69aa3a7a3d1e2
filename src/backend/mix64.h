// The splitmix64 finaliser: a fast 64-bit mixing function, shared by host and device code so
// that LoRA dropout masks are the same on every backend.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LLAMAQ_HOST_DEVICE __host__ __device__
#else
#define LLAMAQ_HOST_DEVICE
#endif

namespace llamaq {

LLAMAQ_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace llamaq
