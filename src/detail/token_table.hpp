// Token text -> dense id (private): an open-addressing hash table over one arena of token
// text, for counting and interning millions of tokens without an allocation per token.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace imcap::detail {

// Ids are dense, in order of first occurrence. Open addressing with linear probing.
class TokenTable {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  static constexpr std::size_t kInitialSlots = 1024;  // a power of two, doubled when half full

  TokenTable() : slots_(kInitialSlots, kNone), hashes_(kInitialSlots) {}

  std::uint32_t intern(std::string_view token) {
    const std::uint64_t h = hash(token);
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = h & mask;; i = (i + 1) & mask) {
      const std::uint32_t id = slots_[i];
      if (id == kNone) {
        const auto new_id = static_cast<std::uint32_t>(begin_.size() - 1);
        arena_.append(token);
        begin_.push_back(arena_.size());
        slots_[i] = new_id;
        hashes_[i] = h;
        if (2 * (begin_.size() - 1) > slots_.size()) grow();
        return new_id;
      }
      if (hashes_[i] == h && text(id) == token) return id;
    }
  }

  std::size_t size() const { return begin_.size() - 1; }

  /// The text of token `id` (< size()).
  std::string_view text(std::uint32_t id) const {
    return std::string_view(arena_).substr(begin_[id], begin_[id + 1] - begin_[id]);
  }

 private:
  static std::uint64_t hash(std::string_view s) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h * 0x9E3779B97F4A7C15ull;
  }

  void grow() {
    std::vector<std::uint32_t> slots(slots_.size() * 2, kNone);
    std::vector<std::uint64_t> hashes(slots.size());
    const std::size_t mask = slots.size() - 1;
    for (std::size_t j = 0; j < slots_.size(); ++j) {
      if (slots_[j] == kNone) continue;
      std::size_t i = hashes_[j] & mask;
      while (slots[i] != kNone) i = (i + 1) & mask;
      slots[i] = slots_[j];
      hashes[i] = hashes_[j];
    }
    slots_.swap(slots);
    hashes_.swap(hashes);
  }

  std::vector<std::uint32_t> slots_;
  std::vector<std::uint64_t> hashes_;
  std::string arena_;
  std::vector<std::size_t> begin_{0};
};

}  // namespace imcap::detail
