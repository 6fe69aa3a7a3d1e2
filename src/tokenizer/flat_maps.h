// Two open-addressing hash maps for the BPE hot path: byte string -> token id (the vocabulary,
// looked up once per pre-tokenized piece) and token-id pair -> merge (looked up for every
// adjacent pair while merging). Hand-written instead of std::unordered_map because encoding speed
// is dominated by these lookups: flat slot arrays with linear probing keep a lookup to one or two
// cache misses, store no per-entry heap nodes, and look up std::string_view keys without
// building a std::string. Both are built once at load time and only read afterwards, so they are
// safe to share between threads.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llamaq {

inline uint64_t mix_bits(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

inline uint64_t hash_bytes(std::string_view bytes) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ bytes.size();
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    h = mix_bits(h ^ word);
  }
  uint64_t tail = 0;
  if (i < bytes.size()) std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  return mix_bits(h ^ tail);
}

class ByteStringIdMap {
 public:
  // Inserts key -> value; returns false (and keeps the old value) when key is already present.
  bool insert(std::string_view key, int32_t value);
  std::optional<int32_t> find(std::string_view key) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0;
    uint32_t length = 0;
    int32_t value = -1;  // -1: empty slot
  };
  void grow();
  size_t probe(std::string_view key, uint64_t hash) const;

  std::vector<Slot> slots_;
  std::string arena_;  // all keys, back to back
  size_t size_ = 0;
};

struct MergeRule {
  int32_t rank;       // position in the merges list: lower merges first
  int32_t merged_id;  // id of the concatenated token
};

class TokenPairMergeMap {
 public:
  // Inserts or replaces (a later merge of the same pair wins, as in Hugging Face's map).
  void insert_or_assign(int32_t left, int32_t right, MergeRule rule);
  // Sizes the table for `count` entries up front (load time only).
  void reserve(size_t count);
  const MergeRule* find(int32_t left, int32_t right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pair_key(left, right);
    const size_t mask = slots_.size() - 1;
    for (size_t i = mix_bits(key) & mask;; i = (i + 1) & mask) {
      const Slot& slot = slots_[i];
      if (slot.key == key) return &slot.rule;
      if (slot.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmpty;
    MergeRule rule{};
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  }
  void rehash(size_t slot_count);

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace llamaq
