// The caption tokenizer's core (private). Tokens come out as views into a lower-cased copy of
// the text, so that counting the words of 200k captions allocates only for words not seen yet.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "detail/token_table.hpp"

namespace imcap {
struct CocoCaption;
}

namespace imcap::detail {

/// Tokenizes `text` as imcap::tokenize does. `lowered` receives the lower-cased text and the
/// views in `out` (cleared first) point into it. Both buffers are reused across calls.
void tokenize_views(std::string_view text, std::string& lowered,
                    std::vector<std::string_view>& out);

/// Counts tokens over many captions.
class TokenCounter {
 public:
  /// Tokenizes `caption` and counts its tokens; returns how many it had.
  std::size_t add(std::string_view caption);
  /// Counts a caption's own tokens where it has them (a Karpathy file's), else its tokenized
  /// text; returns how many there were.
  std::size_t add(const CocoCaption& caption);
  /// The counts so far, keyed by token.
  std::unordered_map<std::string, std::int64_t> counts() const;

 private:
  void count(std::string_view token);

  TokenTable table_;
  std::vector<std::int64_t> counts_;  // by TokenTable id
  std::string lowered_;
  std::vector<std::string_view> tokens_;
};

}  // namespace imcap::detail
