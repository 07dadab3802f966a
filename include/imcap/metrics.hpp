// Caption metrics as the COCO caption evaluation toolkit (coco-caption, pycocoevalcap) computes
// them: BLEU-1..4, ROUGE-L and CIDEr-D, natively and fast (docs/metrics.md).
//
//   std::map<std::int64_t, std::vector<std::string>> refs{{42, {"A dog runs.", "a dog running"}}};
//   std::map<std::int64_t, std::string> candidates{{42, "a dog runs on grass"}};
//   imcap::CorpusScores s = imcap::evaluate_captions(refs, candidates);
//   double bleu4 = s.corpus.bleu[3], cider = s.corpus.cider;
//
//   // or from files, as `imcap eval` does:
//   auto annotations = imcap::CocoAnnotations::load("captions_val2014.json");
//   auto results = imcap::load_caption_results("results.json");
//   imcap::CorpusScores t = imcap::evaluate_results(annotations, results);
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace imcap {

class CocoAnnotations;

/// BLEU-1..4, ROUGE-L and CIDEr-D of one image or of a corpus.
struct CaptionScores {
  std::array<double, 4> bleu{};  ///< bleu[n-1] = BLEU-n (coco-caption's Bleu_1 .. Bleu_4)
  double rouge_l = 0.0;          ///< ROUGE-L F-measure, beta = 1.2 (ROUGE_L)
  double cider = 0.0;            ///< CIDEr-D, x10 scale as coco-caption reports it (CIDEr)
};

/// The scores of one evaluated image.
struct ImageScores {
  std::int64_t image_id = 0;
  /// BLEU here is sentence-level: the corpus formula applied to this image alone (what
  /// coco-caption's Bleu returns for a one-image corpus). ROUGE-L and CIDEr-D are the values whose
  /// mean is the corpus score; CIDEr-D's document frequencies come from the whole evaluated corpus.
  CaptionScores scores;
};

/// The result of evaluating a set of candidate captions.
struct CorpusScores {
  /// Corpus BLEU (from summed counts), mean ROUGE-L, mean CIDEr-D: the numbers coco-caption
  /// reports.
  CaptionScores corpus;
  /// One entry per evaluated image, in increasing image id order.
  std::vector<ImageScores> per_image;
  /// Number of reference captions of the evaluated images.
  std::size_t references = 0;
};

/// The evaluation tokenizer: ASCII letters lowercased, every byte other than a-z, 0-9 and
/// whitespace treated as a space, then split on whitespace ("A man's T-shirt." -> a man s t shirt).
/// It stands in for coco-caption's Java PTBTokenizer (differences in docs/metrics.md).
std::vector<std::string> tokenize_for_eval(std::string_view caption);

/// Scores one candidate caption per image against that image's reference captions. Exactly the
/// images of `candidates` are evaluated; `references` may hold more images, which are ignored
/// (they count neither for scores nor for CIDEr-D's document frequencies). Captions are raw text,
/// tokenized with tokenize_for_eval. Throws InvalidArgument when `candidates` is empty or an image
/// of `candidates` has no entry or no caption in `references`.
CorpusScores evaluate_captions(const std::map<std::int64_t, std::vector<std::string>>& references,
                               const std::map<std::int64_t, std::string>& candidates);

/// CIDEr-D of captions against each image's references, with the document frequencies of a fixed
/// set of references: the reward of self-critical training, scored one caption at a time. The
/// references' n-grams, weights and norms are computed once. When the set is the evaluated
/// images' own references, score(id, caption) equals evaluate_captions' per-image CIDEr-D of
/// that caption (tested). score() is const and may be called from several threads at once.
///
///   imcap::CiderD reward(training_references);           // image id -> reference captions
///   double r = reward.score(42, "a dog runs on grass");   // x10, as coco-caption reports
class CiderD {
 public:
  /// `references`: image id -> its reference captions (raw text, tokenized with
  /// tokenize_for_eval). An n-gram's document frequency is the number of these images whose
  /// references hold it. `count_end`: an end-of-caption word (kEndWord) closes every reference
  /// and every scored caption, as self-critical.pytorch scores its <end> token, so that a caption
  /// that stops mid-phrase misses the n-grams that end the references. Throws InvalidArgument
  /// when there is no image, or an image without a reference.
  explicit CiderD(const std::map<std::int64_t, std::vector<std::string>>& references,
                  bool count_end = false);
  ~CiderD();
  CiderD(CiderD&&) noexcept;
  CiderD& operator=(CiderD&&) noexcept;

  /// CIDEr-D (x10) of `caption` (raw text) against the references of `image_id`. Throws
  /// InvalidArgument for an image that is not in the references.
  double score(std::int64_t image_id, std::string_view caption) const;
  /// The same for a caption already split into tokenize_for_eval's tokens (without kEndWord,
  /// which score_tokens adds with `count_end`).
  double score_tokens(std::int64_t image_id, const std::vector<std::string>& tokens) const;
  /// Images in the references.
  std::size_t num_images() const;
  /// The end-of-caption word of `count_end`: no tokenize_for_eval token can equal it.
  static constexpr const char* kEndWord = "<end>";

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Same, with the references of each candidate image taken from a COCO annotation file. Throws
/// InvalidArgument naming the annotation file when `results` is empty or names an image that the
/// annotations lack or that has no caption there.
CorpusScores evaluate_results(const CocoAnnotations& annotations,
                              const std::map<std::int64_t, std::string>& results);

/// Reads a COCO results file: a JSON list of {"image_id": int, "caption": str} objects (other keys
/// are ignored), one per image. Throws IoError, or FormatError naming the file and the JSON path
/// for malformed JSON, a top level that is not a list, an empty list, entries that are not
/// objects, missing or mistyped keys, and duplicate image ids.
std::map<std::int64_t, std::string> load_caption_results(const std::string& path);
/// Parses the text of a results file; `name` stands for the file in error messages.
std::map<std::int64_t, std::string> parse_caption_results(std::string_view json,
                                                          const std::string& name);

}  // namespace imcap
