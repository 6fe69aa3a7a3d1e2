// Byte-pair encoding with the semantics of Hugging Face's `BPE` model over the byte-level
// alphabet, but on raw bytes: a piece (one pre-tokenizer match, UTF-8 bytes) starts as one symbol
// per byte; the adjacent pair with the lowest merge rank (leftmost on ties) is merged until no
// pair has a merge. With ignore_merges, a piece that is itself in the vocabulary is emitted
// directly first (Llama 3's tokenizer.json sets this; it makes HF's result equal tiktoken's).
//
// Two merge loops with the same result: a linear rescan for short pieces (cheap, cache
// friendly) and HF's min-heap over a linked list for long ones, so a multi-megabyte piece
// (e.g. one huge run of letters) merges in O(n log n) instead of O(n^2).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "tokenizer/flat_maps.h"

namespace llamaq {

// Per-call working memory, reused across pieces to avoid allocations in the hot loop.
struct BpeScratch {
  struct HeapEntry {
    int32_t rank;
    int32_t pos;
    int32_t merged_id;
  };
  std::vector<int32_t> symbols;
  std::vector<MergeRule> pairs;  // pairs[i]: merge of symbols[i] and symbols[i + 1], if any
  std::vector<int32_t> prev;
  std::vector<int32_t> next;
  std::vector<HeapEntry> heap;
};

struct BpeOptions {
  bool ignore_merges = false;
  std::optional<int32_t>
      unk_id;             // used for bytes without a token; nullopt: such a byte is an error
  bool fuse_unk = false;  // consecutive unknown bytes become a single unk
};

class BpeModel {
 public:
  // Pieces with at most this many initial symbols use the linear merge loop.
  static constexpr size_t kLinearMergeLimit = 48;

  // Load-time setup. add_token returns false when the bytes are already in the vocabulary.
  bool add_token(std::string_view bytes, int32_t id);
  void add_merge(int32_t left, int32_t right, int32_t merged_id, int32_t rank);
  void reserve_merges(size_t count) { merges_.reserve(count); }
  void set_options(const BpeOptions& options) { options_ = options; }

  std::optional<int32_t> find(std::string_view bytes) const { return vocab_.find(bytes); }
  size_t merge_count() const { return merges_.size(); }

  // Appends the ids of one piece; fails (llamaq::Error) on a byte that has no token and no unk.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out, BpeScratch& scratch) const;

  // The same with a chosen merge loop (tests compare the two).
  enum class MergeLoop { kLinear, kHeap };
  void encode_piece_with(std::string_view piece, MergeLoop loop, std::vector<int32_t>& out,
                         BpeScratch& scratch) const;

 private:
  void initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const;
  void merge_linear(BpeScratch& scratch) const;
  void merge_with_heap(BpeScratch& scratch) const;
  MergeRule pair_rule(int32_t left, int32_t right) const;

  ByteStringIdMap vocab_;
  TokenPairMergeMap merges_;
  std::array<int32_t, 256> byte_ids_ = filled_minus_one();
  BpeOptions options_;

  static std::array<int32_t, 256> filled_minus_one() {
    std::array<int32_t, 256> ids{};
    ids.fill(-1);
    return ids;
  }
};

}  // namespace llamaq
