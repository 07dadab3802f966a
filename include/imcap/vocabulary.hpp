// Vocabulary: the mapping between caption words and the integer ids the decoder uses.
//
//   auto vocab = imcap::Vocabulary::build({"captions_train2014.json"}, {/*threshold=*/5});
//   std::vector<std::int64_t> ids = vocab.encode("A man riding a horse.");  // <start> ... <end>
//   std::string text = vocab.decode(ids);                                   // "a man riding a
//   horse ." vocab.save("vocab.txt");
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace imcap {

/// Splits a caption into lower-case word tokens, the way NLTK's word_tokenize does for
/// ordinary English captions (see docs/vocabulary.md for the exact rules):
/// "A man's table." -> {"a", "man", "'s", "table", "."}.
std::vector<std::string> tokenize(std::string_view text);

class CocoAnnotations;

/// Names of the special tokens.
inline constexpr std::string_view kPadToken = "<pad>";
inline constexpr std::string_view kStartToken = "<start>";
inline constexpr std::string_view kEndToken = "<end>";
inline constexpr std::string_view kUnkToken = "<unk>";

/// Options for Vocabulary::build.
struct VocabularyOptions {
  /// Words seen fewer than this many times map to <unk> (the seed's vocab_threshold). Default 5.
  int threshold = 5;
  /// Keep at most this many words besides the specials, most frequent first; 0 = no limit.
  std::size_t max_size = 0;
};

/// Word <-> id table with special tokens. A built vocabulary has <pad>=0, <start>=1, <end>=2,
/// <unk>=3, then the words by count (highest first), ties alphabetically. A loaded or imported
/// one keeps its ids as they are: <pad> is optional (the Udacity notebook's vocab.pkl has none).
class Vocabulary {
 public:
  /// Builds from one or more COCO caption annotation files.
  static Vocabulary build(const std::vector<std::string>& annotation_files,
                          const VocabularyOptions& options = {});
  /// Builds from annotations already read (e.g. one split of Karpathy's file), counting a
  /// caption's own tokens where it has them (CocoCaption::tokens).
  static Vocabulary build(const CocoAnnotations& annotations,
                          const VocabularyOptions& options = {});
  /// Builds from captions already in memory.
  static Vocabulary build_from_captions(const std::vector<std::string>& captions,
                                        const VocabularyOptions& options = {});
  /// Builds from word counts (word -> count); the specials are added in front.
  static Vocabulary from_counts(const std::unordered_map<std::string, std::int64_t>& counts,
                                const VocabularyOptions& options = {});
  /// Takes the tokens in id order. Needs <start>, <end> and <unk>; <pad> is optional. Throws
  /// InvalidArgument on a duplicate, an empty token or a missing special.
  static Vocabulary from_tokens(std::vector<std::string> tokens,
                                std::vector<std::int64_t> counts = {});

  /// Loads the text format written by save(). Throws IoError / FormatError naming the file and
  /// line.
  static Vocabulary load(const std::string& path);
  /// Reads the text format from a stream; `name` is used in error messages.
  static Vocabulary read(std::istream& in, const std::string& name = "<stream>");
  /// Saves as UTF-8 text: a header line, then one "token<TAB>count" line per id (crash-safe write).
  void save(const std::string& path) const;
  /// The text that save() writes.
  std::string to_string() const;

  /// Number of tokens, specials included.
  std::size_t size() const { return tokens_.size(); }
  /// The token with this id. Throws InvalidArgument when id is out of [0, size()).
  const std::string& token(std::int64_t id) const;
  /// The id of a token, or unk_id() when it is not in the vocabulary.
  std::int64_t id(std::string_view token) const;
  /// Whether the token is in the vocabulary.
  bool contains(std::string_view token) const;
  /// Corpus count of the token with this id (0 for specials or when unknown).
  std::int64_t count(std::int64_t id) const;

  /// Tokenizes text and maps it to ids, with <start> ... <end> around it when add_specials.
  std::vector<std::int64_t> encode(std::string_view text, bool add_specials = true) const;
  /// Maps tokens (already tokenized) to ids, with <start> ... <end> around them when add_specials.
  std::vector<std::int64_t> encode_tokens(const std::vector<std::string>& tokens,
                                          bool add_specials = true) const;
  /// Maps ids to words joined by single spaces. Unless keep_specials, stops at <end> and skips
  /// <start> and <pad>. Throws InvalidArgument on an out-of-range id.
  std::string decode(const std::vector<std::int64_t>& ids, bool keep_specials = false) const;
  /// Like decode, but returns the words.
  std::vector<std::string> decode_tokens(const std::vector<std::int64_t>& ids,
                                         bool keep_specials = false) const;

  /// Id of <pad>, if the vocabulary has one.
  std::optional<std::int64_t> pad_id() const { return pad_id_; }
  std::int64_t start_id() const { return start_id_; }
  std::int64_t end_id() const { return end_id_; }
  std::int64_t unk_id() const { return unk_id_; }
  /// Whether id is one of the special tokens.
  bool is_special(std::int64_t id) const;

  /// All tokens in id order.
  const std::vector<std::string>& tokens() const { return tokens_; }

  bool operator==(const Vocabulary& other) const { return tokens_ == other.tokens_; }
  bool operator!=(const Vocabulary& other) const { return !(*this == other); }

 private:
  Vocabulary() = default;

  std::vector<std::string> tokens_;
  std::vector<std::int64_t> counts_;
  std::unordered_map<std::string, std::int64_t> index_;
  std::optional<std::int64_t> pad_id_;
  std::int64_t start_id_ = -1;
  std::int64_t end_id_ = -1;
  std::int64_t unk_id_ = -1;
};

}  // namespace imcap
