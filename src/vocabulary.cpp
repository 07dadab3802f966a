#include "imcap/vocabulary.hpp"

#include <algorithm>
#include <array>
#include <sstream>

#include <fmt/format.h>

#include "detail/io.hpp"
#include "detail/tokenizer.hpp"
#include "detail/utf8.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

constexpr std::string_view kVocabHeader = "# imcap vocabulary v1";

// Character classes of the tokenizer, looked up once per byte.
enum : std::uint8_t {
  kSpace = 1,       // separates words
  kSplit = 2,       // always a token of its own, as in NLTK's Treebank rules
  kMaybeSplit = 4,  // ',' ':' (not inside numbers: "1,000", "10:30"), '-' ("--"), '.' ("...")
  kInWord = 8,      // '\'' and '.', which split_word handles
  kUpper = 16,
};

constexpr std::array<std::uint8_t, 256> make_char_classes() {
  std::array<std::uint8_t, 256> t{};
  for (const unsigned char c : {' ', '\t', '\n', '\r', '\f', '\v'}) t[c] = kSpace;
  for (const unsigned char c :
       {'?', '!', ';', '@', '#', '$', '%', '&', '(', ')', '[', ']', '{', '}', '<', '>', '"', '`'})
    t[c] = kSplit;
  for (const unsigned char c : {',', ':', '-'}) t[c] = kMaybeSplit;
  t[static_cast<unsigned char>('.')] = kMaybeSplit | kInWord;
  t[static_cast<unsigned char>('\'')] = kInWord;
  for (unsigned c = 'A'; c <= 'Z'; ++c) t[c] = kUpper;
  return t;
}
constexpr std::array<std::uint8_t, 256> kCharClass = make_char_classes();

std::uint8_t char_class(char c) { return kCharClass[static_cast<unsigned char>(c)]; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || static_cast<unsigned char>(c) >= 0x80; }

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// NLTK's CONTRACTIONS2: words split into two without an apostrophe.
constexpr std::array<std::pair<std::string_view, std::size_t>, 7> kSplitWords{{
    {"cannot", 3},
    {"gimme", 3},
    {"gonna", 3},
    {"gotta", 3},
    {"lemme", 3},
    {"wanna", 3},
    {"d'ye", 1},
}};

// Splits one piece without separators: clitics ("man's" -> "man" "'s", "don't" -> "do" "n't"),
// a final period, surrounding single quotes.
void split_word(std::string_view w, bool plain, std::vector<std::string_view>& out) {
  if (w.empty()) return;
  if (plain && w.size() != 5 && w.size() != 6) {  // no quote or period, not a kSplitWords entry
    out.push_back(w);
    return;
  }
  // A leading quote that opens a quotation ("'hello") stands alone; "'s" itself is a clitic.
  if (w.size() > 1 && w.front() == '\'' && is_alpha(w[1]) && w != "'s" && w != "'m" && w != "'d" &&
      w != "'ll" && w != "'re" && w != "'ve") {
    out.push_back(w.substr(0, 1));
    w.remove_prefix(1);
  }
  std::array<std::string_view, 4> tail;  // tokens split from the end, in reverse order
  std::size_t n_tail = 0;
  // Final period: split unless the word is an initialism like "u.s." or is only dots.
  if (w.size() > 1 && w.back() == '.' &&
      w.substr(0, w.size() - 1).find('.') == std::string_view::npos) {
    tail[n_tail++] = w.substr(w.size() - 1);
    w.remove_suffix(1);
  }
  if (w.size() > 1 && w.back() == '\'' && w[w.size() - 2] != '\'') {
    tail[n_tail++] = w.substr(w.size() - 1);
    w.remove_suffix(1);
  }
  for (std::string_view clitic : {"n't", "'ll", "'re", "'ve", "'s", "'m", "'d"}) {
    if (w.size() > clitic.size() && ends_with(w, clitic)) {
      tail[n_tail++] = w.substr(w.size() - clitic.size());
      w.remove_suffix(clitic.size());
      break;
    }
  }
  for (const auto& [word, cut] : kSplitWords) {
    if (w == word) {
      tail[n_tail++] = w.substr(cut);
      w = w.substr(0, cut);
      break;
    }
  }
  if (!w.empty()) out.push_back(w);
  while (n_tail > 0) out.push_back(tail[--n_tail]);
}

void tokenize_chunk(std::string_view chunk, std::vector<std::string_view>& out) {
  std::size_t start = 0;
  bool plain = true;  // no quote or period since start
  auto flush = [&](std::size_t end) {
    split_word(chunk.substr(start, end - start), plain, out);
    plain = true;
  };
  std::size_t i = 0;
  while (i < chunk.size()) {
    const char c = chunk[i];
    const std::uint8_t cls = char_class(c);
    if ((cls & (kSplit | kMaybeSplit | kInWord)) == 0) {
      ++i;
      continue;
    }
    if (cls & kInWord) plain = false;
    std::size_t sep_len = 0;
    if (cls & kSplit) {
      sep_len = 1;
    } else if (c == ',' || c == ':') {
      const bool inside_number =
          i > 0 && i + 1 < chunk.size() && is_digit(chunk[i - 1]) && is_digit(chunk[i + 1]);
      sep_len = inside_number ? 0 : 1;
    } else if (c == '-' && i + 1 < chunk.size() && chunk[i + 1] == '-') {
      sep_len = 2;
      while (i + sep_len < chunk.size() && chunk[i + sep_len] == '-') ++sep_len;
    } else if (c == '.' && i + 2 < chunk.size() && chunk[i + 1] == '.' && chunk[i + 2] == '.') {
      sep_len = 3;
      while (i + sep_len < chunk.size() && chunk[i + sep_len] == '.') ++sep_len;
    }
    if (sep_len == 0) {
      ++i;
      continue;
    }
    flush(i);
    out.push_back(chunk.substr(i, sep_len));
    i += sep_len;
    start = i;
  }
  flush(chunk.size());
}

}  // namespace

namespace detail {

void tokenize_views(std::string_view text, std::string& lowered,
                    std::vector<std::string_view>& out) {
  lowered.resize(text.size());
  for (std::size_t k = 0; k < text.size(); ++k)
    lowered[k] = (char_class(text[k]) & kUpper) ? static_cast<char>(text[k] - 'A' + 'a') : text[k];
  out.clear();
  const std::string_view s = lowered;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (char_class(s[i]) & kSpace)) ++i;
    std::size_t j = i;
    while (j < s.size() && !(char_class(s[j]) & kSpace)) ++j;
    if (j > i) tokenize_chunk(s.substr(i, j - i), out);
    i = j;
  }
}

void TokenCounter::count(std::string_view token) {
  const std::uint32_t id = table_.intern(token);
  if (id == counts_.size()) counts_.push_back(0);
  ++counts_[id];
}

std::size_t TokenCounter::add(std::string_view caption) {
  tokenize_views(caption, lowered_, tokens_);
  for (const auto token : tokens_) count(token);
  return tokens_.size();
}

std::size_t TokenCounter::add(const CocoCaption& caption) {
  if (caption.tokens.empty()) return add(caption.caption);
  for (const auto& token : caption.tokens) count(token);
  return caption.tokens.size();
}

std::unordered_map<std::string, std::int64_t> TokenCounter::counts() const {
  std::unordered_map<std::string, std::int64_t> out;
  out.reserve(counts_.size());
  for (std::uint32_t id = 0; id < counts_.size(); ++id) out.emplace(table_.text(id), counts_[id]);
  return out;
}

}  // namespace detail

std::vector<std::string> tokenize(std::string_view text) {
  std::string lowered;
  std::vector<std::string_view> views;
  detail::tokenize_views(text, lowered, views);
  return {views.begin(), views.end()};
}

Vocabulary Vocabulary::from_tokens(std::vector<std::string> tokens,
                                   std::vector<std::int64_t> counts) {
  if (!counts.empty() && counts.size() != tokens.size())
    throw InvalidArgument(
        fmt::format("vocabulary: {} counts given for {} tokens", counts.size(), tokens.size()));
  Vocabulary v;
  v.index_.reserve(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (t.empty()) throw InvalidArgument(fmt::format("vocabulary: token {} is empty", i));
    if (const auto problem = detail::utf8_problem(t); !problem.empty())
      throw InvalidArgument(fmt::format("vocabulary: token {}: {}", i, problem));
    if (t.find_first_of("\t\n\r") != std::string::npos)
      throw InvalidArgument(
          fmt::format("vocabulary: token {} ('{}') contains a tab or a line break", i, t));
    const auto [it, inserted] = v.index_.emplace(t, static_cast<std::int64_t>(i));
    if (!inserted)
      throw InvalidArgument(
          fmt::format("vocabulary: token '{}' appears twice, at ids {} and {}", t, it->second, i));
  }
  auto find = [&](std::string_view name) -> std::optional<std::int64_t> {
    const auto it = v.index_.find(std::string(name));
    if (it == v.index_.end()) return std::nullopt;
    return it->second;
  };
  for (std::string_view name : {kStartToken, kEndToken, kUnkToken})
    if (!find(name))
      throw InvalidArgument(fmt::format("vocabulary: the special token '{}' is missing", name));
  v.pad_id_ = find(kPadToken);
  v.start_id_ = *find(kStartToken);
  v.end_id_ = *find(kEndToken);
  v.unk_id_ = *find(kUnkToken);
  v.tokens_ = std::move(tokens);
  v.counts_ = counts.empty() ? std::vector<std::int64_t>(v.tokens_.size(), 0) : std::move(counts);
  return v;
}

Vocabulary Vocabulary::from_counts(const std::unordered_map<std::string, std::int64_t>& counts,
                                   const VocabularyOptions& options) {
  if (options.threshold < 0)
    throw InvalidArgument(fmt::format("vocabulary: threshold {} is negative", options.threshold));
  std::vector<std::pair<std::string_view, std::int64_t>> kept;
  for (const auto& [word, n] : counts) {
    if (n < options.threshold) continue;
    if (word == kPadToken || word == kStartToken || word == kEndToken || word == kUnkToken)
      continue;
    kept.emplace_back(word, n);
  }
  // Highest count first, then alphabetical: the same corpus always gives the same ids.
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  if (options.max_size > 0 && kept.size() > options.max_size) kept.resize(options.max_size);
  std::vector<std::string> tokens{std::string(kPadToken), std::string(kStartToken),
                                  std::string(kEndToken), std::string(kUnkToken)};
  std::vector<std::int64_t> freq(tokens.size(), 0);
  tokens.reserve(kept.size() + 4);
  freq.reserve(kept.size() + 4);
  for (const auto& [word, n] : kept) {
    tokens.emplace_back(word);
    freq.push_back(n);
  }
  return from_tokens(std::move(tokens), std::move(freq));
}

Vocabulary Vocabulary::build_from_captions(const std::vector<std::string>& captions,
                                           const VocabularyOptions& options) {
  detail::TokenCounter counter;
  for (const auto& caption : captions) counter.add(caption);
  return from_counts(counter.counts(), options);
}

Vocabulary Vocabulary::build(const std::vector<std::string>& annotation_files,
                             const VocabularyOptions& options) {
  if (annotation_files.empty())
    throw InvalidArgument("vocabulary: no annotation file given to build from");
  detail::TokenCounter counter;
  for (const auto& file : annotation_files) {
    const auto annotations = CocoAnnotations::load(file);
    for (const auto& caption : annotations.captions()) counter.add(caption);
  }
  return from_counts(counter.counts(), options);
}

Vocabulary Vocabulary::build(const CocoAnnotations& annotations, const VocabularyOptions& options) {
  detail::TokenCounter counter;
  for (const auto& caption : annotations.captions()) counter.add(caption);
  return from_counts(counter.counts(), options);
}

std::string Vocabulary::to_string() const {
  std::string out(kVocabHeader);
  out += '\n';
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    out += tokens_[i];
    out += '\t';
    out += std::to_string(counts_[i]);
    out += '\n';
  }
  return out;
}

void Vocabulary::save(const std::string& path) const {
  detail::write_file_atomic(path, to_string());
}

Vocabulary Vocabulary::read(std::istream& in, const std::string& name) {
  std::string line;
  if (!std::getline(in, line))
    throw FormatError(fmt::format("{}: empty file, expected an imcap vocabulary", name));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line != kVocabHeader)
    throw FormatError(fmt::format("{}: line 1: expected the header '{}', got '{}'", name,
                                  kVocabHeader, line.substr(0, 80)));
  std::vector<std::string> tokens;
  std::vector<std::int64_t> counts;
  std::size_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const auto tab = line.rfind('\t');
    if (tab == std::string::npos || tab == 0)
      throw FormatError(fmt::format("{}: line {}: expected 'token<TAB>count', got '{}'", name,
                                    line_no, line.substr(0, 80)));
    const std::string count_text = line.substr(tab + 1);
    std::int64_t count = 0;
    std::size_t used = 0;
    try {
      count = std::stoll(count_text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != count_text.size() || count < 0)
      throw FormatError(fmt::format("{}: line {}: expected a count >= 0 after the tab, got '{}'",
                                    name, line_no, count_text.substr(0, 40)));
    tokens.push_back(line.substr(0, tab));
    if (const auto problem = detail::utf8_problem(tokens.back()); !problem.empty())
      throw FormatError(
          fmt::format("{}: line {}: the token is not text: {}", name, line_no, problem));
    counts.push_back(count);
  }
  if (in.bad()) throw IoError(fmt::format("{}: read error", name));
  try {
    return from_tokens(std::move(tokens), std::move(counts));
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", name, e.what()));
  }
}

Vocabulary Vocabulary::load(const std::string& path) {
  std::istringstream in(detail::read_file(path));
  return read(in, path);
}

const std::string& Vocabulary::token(std::int64_t id) const {
  if (id < 0 || id >= static_cast<std::int64_t>(tokens_.size()))
    throw InvalidArgument(
        fmt::format("vocabulary: id {} is out of range [0, {})", id, tokens_.size()));
  return tokens_[static_cast<std::size_t>(id)];
}

std::int64_t Vocabulary::id(std::string_view token) const {
  const auto it = index_.find(std::string(token));
  return it == index_.end() ? unk_id_ : it->second;
}

bool Vocabulary::contains(std::string_view token) const {
  return index_.count(std::string(token)) != 0;
}

std::int64_t Vocabulary::count(std::int64_t id) const {
  if (id < 0 || id >= static_cast<std::int64_t>(counts_.size())) return 0;
  return counts_[static_cast<std::size_t>(id)];
}

bool Vocabulary::is_special(std::int64_t id) const {
  return id == start_id_ || id == end_id_ || id == unk_id_ || (pad_id_ && id == *pad_id_);
}

std::vector<std::int64_t> Vocabulary::encode_tokens(const std::vector<std::string>& tokens,
                                                    bool add_specials) const {
  std::vector<std::int64_t> ids;
  ids.reserve(tokens.size() + 2);
  if (add_specials) ids.push_back(start_id_);
  for (const auto& t : tokens) ids.push_back(id(t));
  if (add_specials) ids.push_back(end_id_);
  return ids;
}

std::vector<std::int64_t> Vocabulary::encode(std::string_view text, bool add_specials) const {
  return encode_tokens(tokenize(text), add_specials);
}

std::vector<std::string> Vocabulary::decode_tokens(const std::vector<std::int64_t>& ids,
                                                   bool keep_specials) const {
  std::vector<std::string> words;
  words.reserve(ids.size());
  for (const auto i : ids) {
    const std::string& t = token(i);
    if (!keep_specials) {
      if (i == end_id_) break;
      if (i == start_id_ || (pad_id_ && i == *pad_id_)) continue;
    }
    words.push_back(t);
  }
  return words;
}

std::string Vocabulary::decode(const std::vector<std::int64_t>& ids, bool keep_specials) const {
  const auto words = decode_tokens(ids, keep_specials);
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

}  // namespace imcap
