// Open-addressing maps (linear probing, power-of-two capacity, load factor at most 1/2).
#include "tokenizer/flat_maps.h"

#include "core/error.h"

namespace llamaq {

size_t ByteStringIdMap::probe(std::string_view key, uint64_t hash) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& slot = slots_[i];
    if (slot.value < 0) return i;
    if (slot.hash == hash && slot.length == key.size() &&
        std::memcmp(arena_.data() + slot.offset, key.data(), key.size()) == 0) {
      return i;
    }
  }
}

void ByteStringIdMap::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.empty() ? 64 : old.size() * 2, Slot{});
  const size_t mask = slots_.size() - 1;
  for (const Slot& slot : old) {
    if (slot.value < 0) continue;
    size_t i = slot.hash & mask;
    while (slots_[i].value >= 0)
      i = (i + 1) & mask;
    slots_[i] = slot;
  }
}

bool ByteStringIdMap::insert(std::string_view key, int32_t value) {
  if (value < 0) fail("internal error: negative id in ByteStringIdMap");
  if ((size_ + 1) * 2 > slots_.size()) grow();
  const uint64_t hash = hash_bytes(key);
  Slot& slot = slots_[probe(key, hash)];
  if (slot.value >= 0) return false;
  if (arena_.size() + key.size() > UINT32_MAX) fail("vocabulary too large");
  slot = Slot{hash, uint32_t(arena_.size()), uint32_t(key.size()), value};
  arena_.append(key);
  ++size_;
  return true;
}

std::optional<int32_t> ByteStringIdMap::find(std::string_view key) const {
  if (slots_.empty()) return std::nullopt;
  const Slot& slot = slots_[probe(key, hash_bytes(key))];
  if (slot.value < 0) return std::nullopt;
  return slot.value;
}

void TokenPairMergeMap::reserve(size_t count) {
  size_t slot_count = 64;
  while (slot_count < count * 2)
    slot_count *= 2;
  if (slot_count > slots_.size()) rehash(slot_count);
}

void TokenPairMergeMap::rehash(size_t slot_count) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(slot_count, Slot{});
  const size_t mask = slots_.size() - 1;
  for (const Slot& slot : old) {
    if (slot.key == kEmpty) continue;
    size_t i = mix_bits(slot.key) & mask;
    while (slots_[i].key != kEmpty)
      i = (i + 1) & mask;
    slots_[i] = slot;
  }
}

void TokenPairMergeMap::insert_or_assign(int32_t left, int32_t right, MergeRule rule) {
  if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 64 : slots_.size() * 2);
  const uint64_t key = pair_key(left, right);
  const size_t mask = slots_.size() - 1;
  size_t i = mix_bits(key) & mask;
  while (slots_[i].key != kEmpty && slots_[i].key != key)
    i = (i + 1) & mask;
  if (slots_[i].key == kEmpty) ++size_;
  slots_[i] = Slot{key, rule};
}

}  // namespace llamaq
