// The row and token tiling shared by the SIMD linear kernels: full kRowTile x kTokenTile register
// tiles, then the leftover tokens of a row tile as one smaller tile, then the leftover rows one at
// a time. Each (row, token) accumulator of a tile is summed in the same order whatever the tile's
// size, so the tiling never changes a result.
#pragma once

#include <cstdint>

namespace llamaq::cpu {

// tile.template operator()<R, T>(r, t) computes rows [r, r + R) for tokens [t, t + T).
template <int R, int kTokenTile, typename Tile>
inline void tile_tokens(int64_t r, int64_t n_tokens, Tile& tile) {
  static_assert(kTokenTile >= 1 && kTokenTile <= 4);
  int64_t t = 0;
  for (; t + kTokenTile <= n_tokens; t += kTokenTile)
    tile.template operator()<R, kTokenTile>(r, t);
  const int64_t rest = n_tokens - t;
  if constexpr (kTokenTile > 3) {
    if (rest == 3) return tile.template operator()<R, 3>(r, t);
  }
  if constexpr (kTokenTile > 2) {
    if (rest == 2) return tile.template operator()<R, 2>(r, t);
  }
  if (rest == 1) tile.template operator()<R, 1>(r, t);
}

// Every tile of rows [row_begin, row_end) x tokens [0, n_tokens).
template <int kRowTile, int kTokenTile, typename Tile>
inline void for_each_tile(int64_t row_begin, int64_t row_end, int64_t n_tokens, Tile&& tile) {
  int64_t r = row_begin;
  for (; r + kRowTile <= row_end; r += kRowTile)
    tile_tokens<kRowTile, kTokenTile>(r, n_tokens, tile);
  for (; r < row_end; ++r)
    tile_tokens<1, kTokenTile>(r, n_tokens, tile);
}

}  // namespace llamaq::cpu
