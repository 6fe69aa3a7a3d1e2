// Fuzz target: arbitrary bytes as config.json and generation_config.json. Only llamaq::Error may
// escape; a config that parses must satisfy the invariants the model relies on.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const llamaq::LlamaConfig c = llamaq::parse_llama_config(text, "fuzz");
    if (c.head_dim <= 0 || c.head_dim % 2 || c.num_attention_heads % c.num_key_value_heads ||
        c.vocab_size <= 0 || !(c.rms_norm_eps > 0) || !(c.rope_theta > 0)) {
      std::abort();
    }
  } catch (const llamaq::Error&) {
  }
  try {
    llamaq::parse_generation_config(text, "fuzz");
  } catch (const llamaq::Error&) {
  }
  return 0;
}
