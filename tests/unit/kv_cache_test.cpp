#include <gtest/gtest.h>

#include "backend/backend.h"
#include "model/kv_cache.h"
#include "test_util.h"

namespace llamaq {
namespace {

LlamaConfig small_config() {
  LlamaConfig c;
  c.num_hidden_layers = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  return c;
}

TEST(KvCache, AllocatesBlocksAsSequencesGrowAndFreesThem) {
  auto backend = make_cpu_backend(1);
  KvCache cache(*backend, small_config(), 64, 16);
  EXPECT_EQ(cache.capacity_tokens(), 64);
  test::expect_error([&] { cache.reserve(cache.add_sequence(), 65); }, {"context full", "64 tokens"});
  cache.remove_sequence(0);
  const int a = cache.add_sequence();
  const int b = cache.add_sequence();
  cache.reserve(a, 17);  // two blocks
  cache.advance(a, 17);
  EXPECT_EQ(cache.free_tokens(), 32);
  cache.reserve(b, 16);
  cache.advance(b, 16);
  EXPECT_EQ(cache.free_tokens(), 16);
  test::expect_error([&] { cache.reserve(b, 40); }, {"KV cache full", "raise the context"});
  cache.truncate(a, 3);  // back to one block
  EXPECT_EQ(cache.free_tokens(), 32);
  EXPECT_EQ(cache.length(a), 3);
  cache.remove_sequence(b);
  EXPECT_EQ(cache.free_tokens(), 48);
  test::expect_error([&] { cache.length(b); }, {"no sequence"});
  EXPECT_EQ(cache.add_sequence(), b);  // the slot is reused
}

TEST(KvCache, BlockTablesOfTwoSequencesDoNotShareBlocks) {
  auto backend = make_cpu_backend(1);
  KvCache cache(*backend, small_config(), 64, 4);
  const int a = cache.add_sequence();
  const int b = cache.add_sequence();
  cache.reserve(a, 8);
  cache.reserve(b, 8);
  const auto ta = cache.layer_view(0, a).block_table;
  const auto tb = cache.layer_view(0, b).block_table;
  const int32_t* pa = ta.data_as<const int32_t>();
  const int32_t* pb = tb.data_as<const int32_t>();
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) EXPECT_NE(pa[i], pb[j]);
  }
  EXPECT_NE(pa[0], pa[1]);
}

}  // namespace
}  // namespace llamaq
