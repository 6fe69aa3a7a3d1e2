// Fuzz target: arbitrary bytes as a safetensors file. Only llamaq::Error may escape the parser;
// when a header parses, every tensor's range must lie inside the input.
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto header = llamaq::parse_safetensors({data, size}, "fuzz");
    for (const auto& t : header.tensors) {
      if (header.data_start + t.end > size || t.begin > t.end) std::abort();
    }
  } catch (const llamaq::Error&) {
  }
  return 0;
}
