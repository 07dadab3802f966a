// BLEU, ROUGE-L and CIDEr-D as coco-caption computes them (bleu_scorer.py, rouge.py,
// cider_scorer.py). Tokens are interned to dense ids and every n-gram gets a dense id too, by
// sorting (id of its (n-1)-gram prefix, id of its last token) pairs: the inner loops then index
// plain arrays instead of hashing strings, and no two n-grams can collide.
#include "imcap/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "detail/bleu.hpp"
#include "detail/io.hpp"
#include "detail/token_table.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

using detail::bleu_from_counts;

constexpr int kMaxOrder = 4;          // BLEU-1..4 and CIDEr-D's n = 1..4
constexpr double kRougeBeta = 1.2;    // rouge.py
constexpr double kCiderSigma = 6.0;   // cider_scorer.py: Gaussian length penalty
constexpr double kCiderScale = 10.0;  // cider_scorer.py: scores are reported x10
// Results files above this size are refused (a caption per image of COCO test is ~4 MB).
constexpr std::uint64_t kMaxResultsBytes = 1ull << 30;
constexpr std::uint32_t kNoId = std::numeric_limits<std::uint32_t>::max();

// rouge.py splits on single spaces, so an empty caption is one empty token: it matches nothing
// but another empty caption, and counts as length 1.
constexpr std::uint32_t kEmptyToken = kNoId;

bool is_token_byte(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

// Calls f(token) for each evaluation token of a caption, lowercased; the view is valid during the
// call. Tokens are the maximal runs of ASCII letters and digits.
template <class F>
void for_each_eval_token(std::string_view caption, std::string& buffer, F&& f) {
  std::size_t i = 0;
  const std::size_t n = caption.size();
  while (true) {
    while (i < n && !is_token_byte(caption[i])) ++i;
    if (i == n) return;
    const std::size_t begin = i;
    bool upper = false;
    for (; i < n && is_token_byte(caption[i]); ++i) upper |= caption[i] >= 'A' && caption[i] <= 'Z';
    std::string_view token = caption.substr(begin, i - begin);
    if (upper) {
      buffer.assign(token);
      for (char& c : buffer)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      token = buffer;
    }
    f(token);
  }
}

// Sorts keys in increasing order and permutes values alike: an LSD radix sort with as many passes
// as the largest key needs. Streaming passes beat a hash table's cache misses on millions of keys.
void radix_sort(std::vector<std::uint64_t>& keys, std::vector<std::uint32_t>& values) {
  constexpr int kMaxDigitBits = 12;
  std::uint64_t max_key = 0;
  for (const std::uint64_t k : keys) max_key = std::max(max_key, k);
  int key_bits = 0;
  while (key_bits < 64 && (max_key >> key_bits) != 0) ++key_bits;
  const int passes = (key_bits + kMaxDigitBits - 1) / kMaxDigitBits;
  if (passes == 0) return;
  const int digit_bits = (key_bits + passes - 1) / passes;
  const std::uint64_t digit_mask = (std::uint64_t{1} << digit_bits) - 1;
  std::vector<std::uint64_t> sorted_keys(keys.size());
  std::vector<std::uint32_t> sorted_values(values.size());
  std::vector<std::size_t> offsets(digit_mask + 1);
  for (int shift = 0; shift < key_bits; shift += digit_bits) {
    std::fill(offsets.begin(), offsets.end(), 0);
    for (const std::uint64_t k : keys) ++offsets[(k >> shift) & digit_mask];
    std::size_t sum = 0;
    for (auto& o : offsets) sum += std::exchange(o, sum);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const std::size_t to = offsets[(keys[i] >> shift) & digit_mask]++;
      sorted_keys[to] = keys[i];
      sorted_values[to] = values[i];
    }
    keys.swap(sorted_keys);
    values.swap(sorted_values);
  }
}

// One image to evaluate: views into the caller's strings.
struct EvalImage {
  std::int64_t id = 0;
  std::string_view candidate;
  std::vector<std::string_view> references;
};

// Every caption of the evaluation as token ids and n-gram ids.
struct Caption {
  std::size_t token_begin = 0;
  std::size_t length = 0;      // tokens
  std::size_t gram_begin = 0;  // order 1 (L ids), then order 2 (L-1 ids), ... order 4
  std::size_t gram_end = 0;
};

std::size_t grams_of_order(std::size_t length, int order) {
  const auto n = static_cast<std::size_t>(order);
  return length >= n ? length - n + 1 : 0;
}

// The distinct n-grams of one caption with their counts, ordered by n-gram order and, within an
// order, by first occurrence: the iteration order of coco-caption's count dictionaries.
struct Bag {
  std::vector<std::uint32_t> ids;
  std::vector<std::uint32_t> counts;
  std::array<std::size_t, kMaxOrder + 1> order_begin{};
};

class Evaluator {
 public:
  CorpusScores run(const std::vector<EvalImage>& images);

 private:
  // Per n-gram id, 8 bytes (the table has millions of entries, and each image's lookups miss
  // the cache): its document frequency, and a mark that is the last counted image while
  // counting, then its index among the n-grams of the image being scored.
  struct NgramInfo {
    std::uint32_t df = 0;
    std::uint32_t mark = kNoId;
  };

  void add_caption(std::string_view text);
  void assign_ngram_ids();
  void compute_idf(const std::vector<EvalImage>& images);
  void localize(std::size_t first_caption, std::size_t end_caption);
  void fill_bag(const Caption& caption, Bag& bag);
  std::size_t lcs(const Caption& a, const Caption& b);
  ImageScores score_image(const EvalImage& image, std::size_t first_caption,
                          std::array<std::int64_t, 2 * kMaxOrder + 2>& bleu_totals);

  detail::TokenTable token_table_;
  std::string token_buffer_;
  std::vector<std::uint32_t> tokens_;
  std::vector<Caption> captions_;  // per image: the candidate, then its references
  std::vector<std::uint32_t> grams_;
  std::size_t num_ids_ = 0;
  std::vector<NgramInfo> info_;
  double log_images_ = 0.0;
  std::vector<double> log_df_;  // log_df_[d] = log(d)
  // The image being scored, with its n-grams renumbered 0..k-1 (local ids) so that the inner
  // loops touch small arrays only.
  std::size_t image_gram_begin_ = 0;
  std::vector<std::uint32_t> local_grams_;  // local id of grams_[image_gram_begin_ + i]
  std::vector<std::uint32_t> local_to_id_;
  std::vector<double> local_idf_;
  // Indexed by local id, all zero between uses.
  std::vector<std::uint32_t> count_scratch_;
  std::vector<std::uint32_t> max_ref_count_;
  std::vector<double> ref_weight_;
  std::vector<std::uint32_t> lcs_row_;
  Bag candidate_bag_, ref_bag_;
  std::vector<double> candidate_weight_;
};

void Evaluator::add_caption(std::string_view text) {
  Caption c;
  c.token_begin = tokens_.size();
  for_each_eval_token(text, token_buffer_,
                      [&](std::string_view t) { tokens_.push_back(token_table_.intern(t)); });
  c.length = tokens_.size() - c.token_begin;
  captions_.push_back(c);
}

void Evaluator::assign_ngram_ids() {
  // Unigram ids are the token ids. An n-gram of order k is its (k-1)-gram prefix plus a token:
  // sorting those (prefix id, token) pairs groups equal n-grams, and each group gets an id.
  const std::size_t num_tokens = token_table_.size();
  std::size_t total = 0;
  for (auto& c : captions_) {
    c.gram_begin = total;
    for (int k = 1; k <= kMaxOrder; ++k) total += grams_of_order(c.length, k);
    c.gram_end = total;
  }
  if (num_tokens >= kNoId || total >= kNoId)
    throw InvalidArgument("caption metrics: too many captions (over 2^32 - 1 tokens or n-grams)");
  grams_.resize(total);
  for (const auto& c : captions_)
    std::copy_n(tokens_.begin() + static_cast<std::ptrdiff_t>(c.token_begin), c.length,
                grams_.begin() + static_cast<std::ptrdiff_t>(c.gram_begin));

  // Calls f(slot of the prefix's id, slot of the n-gram's id, last token) for each n-gram of
  // order k, in caption order.
  const auto for_each_ngram = [this](int k, auto&& f) {
    for (const auto& c : captions_) {
      std::size_t prefix = c.gram_begin;
      for (int j = 1; j < k - 1; ++j) prefix += grams_of_order(c.length, j);
      const std::size_t out = prefix + grams_of_order(c.length, k - 1);
      const std::uint32_t* t = tokens_.data() + c.token_begin + (k - 1);
      const std::size_t n = grams_of_order(c.length, k);
      for (std::size_t i = 0; i < n; ++i) f(prefix + i, out + i, t[i]);
    }
  };
  std::uint64_t next_id = num_tokens;
  std::uint64_t prefix_first_id = 0;  // the ids of order k-1 are prefix_first_id .. next_id-1
  std::vector<std::uint64_t> keys;
  std::vector<std::uint32_t> slots;  // where in grams_ each key's id goes
  std::vector<std::uint32_t> group_to_id;
  for (int k = 2; k <= kMaxOrder; ++k) {
    keys.clear();
    slots.clear();
    for_each_ngram(k, [&](std::size_t prefix, std::size_t out, std::uint32_t token) {
      keys.push_back((grams_[prefix] - prefix_first_id) * num_tokens + token);
      slots.push_back(static_cast<std::uint32_t>(out));
    });
    radix_sort(keys, slots);
    std::uint32_t groups = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (i > 0 && keys[i] != keys[i - 1]) ++groups;
      grams_[slots[i]] = groups;
    }
    if (!keys.empty()) ++groups;
    // Number the groups in order of first occurrence: frequent n-grams get small ids and an
    // image's new n-grams get neighbouring ids, which keeps the per-id arrays cache-friendly.
    group_to_id.assign(groups, kNoId);
    prefix_first_id = next_id;
    for_each_ngram(k, [&](std::size_t, std::size_t out, std::uint32_t) {
      std::uint32_t& id = group_to_id[grams_[out]];
      if (id == kNoId) id = static_cast<std::uint32_t>(next_id++);
      grams_[out] = id;
    });
    if (next_id >= kNoId)
      throw InvalidArgument("caption metrics: more than 2^32 - 1 distinct n-grams");
  }
  num_ids_ = next_id;
}

void Evaluator::compute_idf(const std::vector<EvalImage>& images) {
  // Document = the reference set of one evaluated image (cider_scorer.compute_doc_freq).
  info_.assign(num_ids_, NgramInfo{});
  std::size_t c = 0;
  for (std::size_t img = 0; img < images.size(); ++img) {
    const std::size_t refs_end = c + 1 + images[img].references.size();
    for (std::size_t g = captions_[c + 1].gram_begin; g < captions_[refs_end - 1].gram_end; ++g) {
      NgramInfo& info = info_[grams_[g]];
      if (info.mark != img) {
        info.mark = static_cast<std::uint32_t>(img);
        ++info.df;
      }
    }
    c = refs_end;
  }
  for (auto& info : info_) info.mark = kNoId;
  // cider_scorer.py: idf numerator log(number of images); n-grams in no reference count df 1.
  log_images_ = std::log(static_cast<double>(images.size()));
  log_df_.assign(images.size() + 1, 0.0);
  for (std::size_t d = 1; d < log_df_.size(); ++d) log_df_[d] = std::log(static_cast<double>(d));
}

void Evaluator::localize(std::size_t first_caption, std::size_t end_caption) {
  for (const std::uint32_t id : local_to_id_) info_[id].mark = kNoId;
  local_to_id_.clear();
  local_idf_.clear();
  image_gram_begin_ = captions_[first_caption].gram_begin;
  const std::size_t end = captions_[end_caption - 1].gram_end;
  local_grams_.resize(end - image_gram_begin_);
  for (std::size_t g = image_gram_begin_; g < end; ++g) {
    NgramInfo& info = info_[grams_[g]];
    if (info.mark == kNoId) {
      info.mark = static_cast<std::uint32_t>(local_to_id_.size());
      local_to_id_.push_back(grams_[g]);
      local_idf_.push_back(log_images_ - log_df_[std::max<std::uint32_t>(1, info.df)]);
    }
    local_grams_[g - image_gram_begin_] = info.mark;
  }
  if (count_scratch_.size() < local_to_id_.size()) {
    count_scratch_.resize(local_to_id_.size(), 0);
    max_ref_count_.resize(local_to_id_.size(), 0);
    ref_weight_.resize(local_to_id_.size(), 0.0);
  }
}

void Evaluator::fill_bag(const Caption& caption, Bag& bag) {
  bag.ids.clear();
  bag.counts.clear();
  const std::uint32_t* local = local_grams_.data() + (caption.gram_begin - image_gram_begin_);
  for (int k = 1; k <= kMaxOrder; ++k) {
    bag.order_begin[k - 1] = bag.ids.size();
    const std::size_t n = grams_of_order(caption.length, k);
    for (std::size_t i = 0; i < n; ++i, ++local)
      if (count_scratch_[*local]++ == 0) bag.ids.push_back(*local);
  }
  bag.order_begin[kMaxOrder] = bag.ids.size();
  bag.counts.resize(bag.ids.size());
  for (std::size_t j = 0; j < bag.ids.size(); ++j) {
    bag.counts[j] = count_scratch_[bag.ids[j]];
    count_scratch_[bag.ids[j]] = 0;
  }
}

std::size_t Evaluator::lcs(const Caption& a, const Caption& b) {
  const std::uint32_t* x = tokens_.data() + a.token_begin;
  const std::uint32_t* y = tokens_.data() + b.token_begin;
  std::size_t nx = a.length, ny = b.length;
  if (nx == 0) x = &kEmptyToken, nx = 1;
  if (ny == 0) y = &kEmptyToken, ny = 1;
  lcs_row_.assign(ny + 1, 0);
  for (std::size_t i = 0; i < nx; ++i) {
    std::uint32_t diagonal = 0;  // row[j] of the previous i
    for (std::size_t j = 0; j < ny; ++j) {
      const std::uint32_t up = lcs_row_[j + 1];
      lcs_row_[j + 1] = x[i] == y[j] ? diagonal + 1 : std::max(up, lcs_row_[j]);
      diagonal = up;
    }
  }
  return lcs_row_[ny];
}

ImageScores Evaluator::score_image(const EvalImage& image, std::size_t first_caption,
                                   std::array<std::int64_t, 2 * kMaxOrder + 2>& bleu_totals) {
  ImageScores out;
  out.image_id = image.id;
  localize(first_caption, first_caption + 1 + image.references.size());
  const Caption& cand = captions_[first_caption];
  fill_bag(cand, candidate_bag_);
  const Bag& cb = candidate_bag_;

  // CIDEr-D candidate vector: tf * idf with raw counts as tf, and its norm per order.
  std::vector<double>& cand_weight = candidate_weight_;
  cand_weight.resize(cb.ids.size());
  std::array<double, kMaxOrder> cand_norm{};
  for (int k = 0; k < kMaxOrder; ++k) {
    for (std::size_t j = cb.order_begin[k]; j < cb.order_begin[k + 1]; ++j) {
      cand_weight[j] = static_cast<double>(cb.counts[j]) * local_idf_[cb.ids[j]];
      cand_norm[k] += cand_weight[j] * cand_weight[j];
    }
    cand_norm[k] = std::sqrt(cand_norm[k]);
  }
  // cider_scorer.py's "length" is the number of bigrams, not of words.
  const auto bigrams = [](const Caption& c) {
    return static_cast<double>(grams_of_order(c.length, 2));
  };

  std::array<double, kMaxOrder> cider_sum{};
  double rouge_precision = 0.0, rouge_recall = 0.0;
  std::int64_t closest_ref_length = -1;
  const auto cand_len = static_cast<std::int64_t>(cand.length);
  for (std::size_t r = 0; r < image.references.size(); ++r) {
    const Caption& ref = captions_[first_caption + 1 + r];
    fill_bag(ref, ref_bag_);
    const Bag& rb = ref_bag_;

    // BLEU: clip by the maximum count over references; effective length closest, ties shorter.
    for (std::size_t j = 0; j < rb.ids.size(); ++j)
      max_ref_count_[rb.ids[j]] = std::max(max_ref_count_[rb.ids[j]], rb.counts[j]);
    const auto ref_len = static_cast<std::int64_t>(ref.length);
    const auto distance = std::abs(ref_len - cand_len);
    const auto best_distance = std::abs(closest_ref_length - cand_len);
    if (closest_ref_length < 0 || distance < best_distance ||
        (distance == best_distance && ref_len < closest_ref_length))
      closest_ref_length = ref_len;

    // ROUGE-L: the best precision and the best recall, each over all references.
    const auto common = static_cast<double>(lcs(cand, ref));
    rouge_precision = std::max(rouge_precision,
                               common / static_cast<double>(std::max<std::size_t>(1, cand.length)));
    rouge_recall =
        std::max(rouge_recall, common / static_cast<double>(std::max<std::size_t>(1, ref.length)));

    // CIDEr-D: clipped cosine similarity per order with a Gaussian length penalty.
    std::array<double, kMaxOrder> ref_norm{};
    for (int k = 0; k < kMaxOrder; ++k) {
      for (std::size_t j = rb.order_begin[k]; j < rb.order_begin[k + 1]; ++j) {
        const double w = static_cast<double>(rb.counts[j]) * local_idf_[rb.ids[j]];
        ref_weight_[rb.ids[j]] = w;
        ref_norm[k] += w * w;
      }
      ref_norm[k] = std::sqrt(ref_norm[k]);
    }
    const double delta = bigrams(cand) - bigrams(ref);
    const double penalty = std::exp(-(delta * delta) / (2.0 * kCiderSigma * kCiderSigma));
    for (int k = 0; k < kMaxOrder; ++k) {
      double val = 0.0;
      for (std::size_t j = cb.order_begin[k]; j < cb.order_begin[k + 1]; ++j) {
        const double rw = ref_weight_[cb.ids[j]];
        val += std::min(cand_weight[j], rw) * rw;
      }
      if (cand_norm[k] != 0.0 && ref_norm[k] != 0.0) val /= cand_norm[k] * ref_norm[k];
      cider_sum[k] += val * penalty;
    }
    for (const std::uint32_t id : rb.ids) ref_weight_[id] = 0.0;
  }

  std::array<std::int64_t, kMaxOrder> guess{}, correct{};
  for (int k = 0; k < kMaxOrder; ++k) {
    guess[k] = static_cast<std::int64_t>(grams_of_order(cand.length, k + 1));
    for (std::size_t j = cb.order_begin[k]; j < cb.order_begin[k + 1]; ++j)
      correct[k] += std::min(cb.counts[j], max_ref_count_[cb.ids[j]]);
  }
  std::fill_n(max_ref_count_.begin(), local_to_id_.size(), 0);

  out.scores.bleu = bleu_from_counts(cand_len, closest_ref_length, guess, correct);
  bleu_totals[0] += cand_len;
  bleu_totals[1] += closest_ref_length;
  for (int k = 0; k < kMaxOrder; ++k) {
    bleu_totals[2 + k] += guess[k];
    bleu_totals[2 + kMaxOrder + k] += correct[k];
  }

  const double beta2 = kRougeBeta * kRougeBeta;
  out.scores.rouge_l = rouge_precision != 0.0 && rouge_recall != 0.0
                           ? (1.0 + beta2) * rouge_precision * rouge_recall /
                                 (rouge_recall + beta2 * rouge_precision)
                           : 0.0;

  double mean = 0.0;
  for (const double v : cider_sum) mean += v;
  mean /= kMaxOrder;
  mean /= static_cast<double>(image.references.size());
  out.scores.cider = mean * kCiderScale;
  return out;
}

CorpusScores Evaluator::run(const std::vector<EvalImage>& images) {
  std::size_t num_refs = 0;
  for (const auto& img : images) num_refs += img.references.size();
  captions_.reserve(images.size() + num_refs);
  for (const auto& img : images) {
    add_caption(img.candidate);
    for (const auto& ref : img.references) add_caption(ref);
  }
  assign_ngram_ids();
  compute_idf(images);

  CorpusScores out;
  out.references = num_refs;
  out.per_image.reserve(images.size());
  // test length, reference length, guesses per order, correct per order
  std::array<std::int64_t, 2 * kMaxOrder + 2> bleu_totals{};
  double rouge_sum = 0.0, cider_sum = 0.0;
  std::size_t first_caption = 0;
  for (const auto& img : images) {
    out.per_image.push_back(score_image(img, first_caption, bleu_totals));
    rouge_sum += out.per_image.back().scores.rouge_l;
    cider_sum += out.per_image.back().scores.cider;
    first_caption += 1 + img.references.size();
  }
  std::array<std::int64_t, kMaxOrder> guess{}, correct{};
  for (int k = 0; k < kMaxOrder; ++k) {
    guess[k] = bleu_totals[2 + k];
    correct[k] = bleu_totals[2 + kMaxOrder + k];
  }
  out.corpus.bleu = bleu_from_counts(bleu_totals[0], bleu_totals[1], guess, correct);
  out.corpus.rouge_l = rouge_sum / static_cast<double>(images.size());
  out.corpus.cider = cider_sum / static_cast<double>(images.size());
  return out;
}

using json = nlohmann::json;

const char* json_type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "a list";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a floating-point number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "an unsupported value";
  }
}

}  // namespace

std::vector<std::string> tokenize_for_eval(std::string_view caption) {
  std::vector<std::string> tokens;
  std::string buffer;
  for_each_eval_token(caption, buffer, [&](std::string_view t) { tokens.emplace_back(t); });
  return tokens;
}

CorpusScores evaluate_captions(const std::map<std::int64_t, std::vector<std::string>>& references,
                               const std::map<std::int64_t, std::string>& candidates) {
  if (candidates.empty())
    throw InvalidArgument("evaluate_captions: no candidate captions to evaluate");
  std::vector<EvalImage> images;
  images.reserve(candidates.size());
  for (const auto& [id, caption] : candidates) {
    const auto it = references.find(id);
    if (it == references.end())
      throw InvalidArgument(
          fmt::format("evaluate_captions: image {} has a candidate caption but no references", id));
    if (it->second.empty())
      throw InvalidArgument(
          fmt::format("evaluate_captions: image {} has an empty list of references", id));
    EvalImage img;
    img.id = id;
    img.candidate = caption;
    img.references.assign(it->second.begin(), it->second.end());
    images.push_back(std::move(img));
  }
  return Evaluator().run(images);
}

CorpusScores evaluate_results(const CocoAnnotations& annotations,
                              const std::map<std::int64_t, std::string>& results) {
  if (results.empty())
    throw InvalidArgument(fmt::format("no results to evaluate against {}", annotations.source()));
  std::vector<EvalImage> images;
  images.reserve(results.size());
  for (const auto& [id, caption] : results) {
    if (!annotations.has_image(id))
      throw InvalidArgument(
          fmt::format("results: image_id {} is not an image of {}", id, annotations.source()));
    const auto& indices = annotations.captions_of(id);
    if (indices.empty())
      throw InvalidArgument(fmt::format("results: image_id {} has no reference caption in {}", id,
                                        annotations.source()));
    EvalImage img;
    img.id = id;
    img.candidate = caption;
    img.references.reserve(indices.size());
    for (const std::size_t i : indices) img.references.push_back(annotations.captions()[i].caption);
    images.push_back(std::move(img));
  }
  return Evaluator().run(images);
}

std::map<std::int64_t, std::string> load_caption_results(const std::string& path) {
  return parse_caption_results(detail::read_file(path, kMaxResultsBytes), path);
}

std::map<std::int64_t, std::string> parse_caption_results(std::string_view text,
                                                          const std::string& name) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {  // out_of_range too, for a number such as 1e500
    throw FormatError(fmt::format("{}: not valid JSON: {}", name, e.what()));
  }
  if (!root.is_array())
    throw FormatError(fmt::format(
        "{}: top level: expected a list of {{\"image_id\": int, \"caption\": str}} objects, got {}",
        name, json_type_name(root)));
  if (root.empty())
    throw FormatError(
        fmt::format("{}: the results list is empty; expected one {{\"image_id\", \"caption\"}} "
                    "object per image",
                    name));
  std::map<std::int64_t, std::string> out;
  std::unordered_map<std::int64_t, std::size_t> first_index;
  for (std::size_t i = 0; i < root.size(); ++i) {
    const json& entry = root[i];
    if (!entry.is_object())
      throw FormatError(
          fmt::format("{}: [{}]: expected an object with \"image_id\" and \"caption\", got {}",
                      name, i, json_type_name(entry)));
    const auto id_it = entry.find("image_id");
    if (id_it == entry.end())
      throw FormatError(fmt::format("{}: [{}]: missing key 'image_id'", name, i));
    if (!id_it->is_number_integer())
      throw FormatError(fmt::format("{}: [{}].image_id: expected an integer, got {}", name, i,
                                    json_type_name(*id_it)));
    if (id_it->is_number_unsigned() &&
        id_it->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      throw FormatError(fmt::format("{}: [{}].image_id: {} is out of range", name, i,
                                    id_it->get<std::uint64_t>()));
    const auto caption_it = entry.find("caption");
    if (caption_it == entry.end())
      throw FormatError(fmt::format("{}: [{}]: missing key 'caption'", name, i));
    if (!caption_it->is_string())
      throw FormatError(fmt::format("{}: [{}].caption: expected a string, got {}", name, i,
                                    json_type_name(*caption_it)));
    const auto id = id_it->get<std::int64_t>();
    const auto [it, inserted] = first_index.emplace(id, i);
    if (!inserted)
      throw FormatError(fmt::format(
          "{}: [{}].image_id: duplicate image_id {} (also [{}]); expected one caption per image",
          name, i, id, it->second));
    out.emplace(id, caption_it->get<std::string>());
  }
  return out;
}

}  // namespace imcap
