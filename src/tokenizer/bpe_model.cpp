// BPE merge loops; see bpe_model.h for the semantics and why there are two loops.
#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace llamaq {
namespace {

constexpr int32_t kNoMerge = std::numeric_limits<int32_t>::max();

// Min-heap order of Hugging Face's Word::merge_all: lowest rank first, then leftmost position.
bool lower_priority(const BpeScratch::HeapEntry& a, const BpeScratch::HeapEntry& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

}  // namespace

bool BpeModel::add_token(std::string_view bytes, int32_t id) {
  if (!vocab_.insert(bytes, id)) return false;
  if (bytes.size() == 1) byte_ids_[static_cast<unsigned char>(bytes[0])] = id;
  return true;
}

void BpeModel::add_merge(int32_t left, int32_t right, int32_t merged_id, int32_t rank) {
  merges_.insert_or_assign(left, right, MergeRule{rank, merged_id});
}

MergeRule BpeModel::pair_rule(int32_t left, int32_t right) const {
  const MergeRule* rule = merges_.find(left, right);
  return rule ? *rule : MergeRule{kNoMerge, -1};
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const {
  symbols.clear();
  bool previous_was_unk = false;
  for (const char c : piece) {
    const unsigned char byte = static_cast<unsigned char>(c);
    const int32_t id = byte_ids_[byte];
    if (id >= 0) {
      symbols.push_back(id);
      previous_was_unk = false;
      continue;
    }
    if (!options_.unk_id) {
      fail("the vocabulary has no token for byte 0x{:02X} and the model has no unk_token", byte);
    }
    if (!(previous_was_unk && options_.fuse_unk)) symbols.push_back(*options_.unk_id);
    previous_was_unk = true;
  }
}

void BpeModel::merge_linear(BpeScratch& scratch) const {
  std::vector<int32_t>& symbols = scratch.symbols;
  std::vector<MergeRule>& pairs = scratch.pairs;
  pairs.clear();
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    pairs.push_back(pair_rule(symbols[i], symbols[i + 1]));
  }
  while (!pairs.empty()) {
    const auto best =
        std::min_element(pairs.begin(), pairs.end(), [](const MergeRule& a, const MergeRule& b) {
          return a.rank < b.rank;  // first minimum = leftmost
        });
    if (best->rank == kNoMerge) break;
    const size_t i = size_t(best - pairs.begin());
    symbols[i] = best->merged_id;
    symbols.erase(symbols.begin() + std::ptrdiff_t(i) + 1);
    pairs.erase(pairs.begin() + std::ptrdiff_t(i));
    if (i > 0) pairs[i - 1] = pair_rule(symbols[i - 1], symbols[i]);
    if (i < pairs.size()) pairs[i] = pair_rule(symbols[i], symbols[i + 1]);
  }
}

void BpeModel::merge_with_heap(BpeScratch& scratch) const {
  std::vector<int32_t>& symbols = scratch.symbols;  // -1 marks a symbol merged into its left
  const auto n = static_cast<int32_t>(symbols.size());
  scratch.prev.resize(size_t(n));
  scratch.next.resize(size_t(n));
  for (int32_t i = 0; i < n; ++i) {
    scratch.prev[size_t(i)] = i - 1;
    scratch.next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  std::vector<BpeScratch::HeapEntry>& heap = scratch.heap;
  heap.clear();
  const auto push = [&](int32_t pos, int32_t right) {
    const MergeRule rule = pair_rule(symbols[size_t(pos)], symbols[size_t(right)]);
    if (rule.rank == kNoMerge) return;
    heap.push_back({rule.rank, pos, rule.merged_id});
    std::push_heap(heap.begin(), heap.end(), lower_priority);
  };
  for (int32_t i = 0; i + 1 < n; ++i)
    push(i, i + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower_priority);
    const BpeScratch::HeapEntry top = heap.back();
    heap.pop_back();
    const auto pos = size_t(top.pos);
    if (symbols[pos] < 0 || scratch.next[pos] < 0) continue;
    const auto right = size_t(scratch.next[pos]);
    const MergeRule current = pair_rule(symbols[pos], symbols[right]);
    if (current.merged_id != top.merged_id) continue;  // stale entry
    symbols[pos] = top.merged_id;
    symbols[right] = -1;
    scratch.next[pos] = scratch.next[right];
    if (scratch.next[pos] >= 0) scratch.prev[size_t(scratch.next[pos])] = top.pos;
    if (scratch.prev[pos] >= 0) push(scratch.prev[pos], top.pos);
    if (scratch.next[pos] >= 0) push(top.pos, scratch.next[pos]);
  }
  std::erase(symbols, -1);
}

void BpeModel::encode_piece_with(std::string_view piece, MergeLoop loop, std::vector<int32_t>& out,
                                 BpeScratch& scratch) const {
  if (piece.empty()) return;
  if (options_.ignore_merges) {
    if (const std::optional<int32_t> id = vocab_.find(piece)) {
      out.push_back(*id);
      return;
    }
  }
  initial_symbols(piece, scratch.symbols);
  if (loop == MergeLoop::kLinear) {
    merge_linear(scratch);
  } else {
    merge_with_heap(scratch);
  }
  out.insert(out.end(), scratch.symbols.begin(), scratch.symbols.end());
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out,
                            BpeScratch& scratch) const {
  const MergeLoop loop = piece.size() <= kLinearMergeLimit ? MergeLoop::kLinear : MergeLoop::kHeap;
  encode_piece_with(piece, loop, out, scratch);
}

}  // namespace llamaq
