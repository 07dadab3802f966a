// CIDEr-D with the document frequencies of a fixed set of references (CiderD): coco-caption's
// cider_scorer.py, computed as src/metrics.cpp computes it (the same sums in the same order),
// with the references' vectors built once so that each caption costs only its own n-grams.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "imcap/error.hpp"
#include "imcap/metrics.hpp"

namespace imcap {

namespace {

constexpr int kOrders = 4;            // n = 1..4
constexpr double kSigma = 6.0;        // cider_scorer.py: Gaussian length penalty
constexpr double kScale = 10.0;       // cider_scorer.py: scores are reported x10
constexpr std::uint32_t kNone = ~0u;  // a word or n-gram that no reference holds

// An n-gram's key from its (n-1)-gram prefix (kNone for unigrams) and its last word.
std::uint64_t gram_key(std::uint32_t prefix, std::uint32_t word) {
  return (static_cast<std::uint64_t>(prefix + 1) << 32) | word;
}

// cider_scorer.py's "length" is the number of bigrams.
double bigram_count(std::size_t words) { return words >= 2 ? static_cast<double>(words - 1) : 0.0; }

// One caption's distinct n-grams per order, in order of first occurrence, with their counts.
// ids are global n-gram ids, or kNone for n-grams no reference holds (then `local` tells apart
// distinct ones).
struct Bag {
  struct Entry {
    std::uint32_t id;
    std::array<std::uint32_t, kOrders> words;  // for n-grams without an id
    std::uint32_t count;
  };
  std::array<std::vector<Entry>, kOrders> grams;
};

// Words and n-grams to dense ids, and each n-gram's document frequency.
struct GramTable {
  std::unordered_map<std::string, std::uint32_t> word_ids;
  std::unordered_map<std::uint64_t, std::uint32_t> gram_ids;
  std::vector<std::uint32_t> df;  // per n-gram id
};

// Word ids of eval tokens; unknown words get kNone and a number in `unknown` that tells them
// apart. A non-const table gives new words ids.
template <typename Table>
void lookup_words(Table& table, const std::vector<std::string>& tokens,
                  std::vector<std::uint32_t>& words, std::vector<std::uint32_t>& unknown) {
  words.clear();
  unknown.clear();
  std::vector<const std::string*> seen;
  for (const auto& t : tokens) {
    auto it = table.word_ids.find(t);
    if constexpr (!std::is_const_v<Table>) {
      if (it == table.word_ids.end())
        it = table.word_ids.emplace(t, static_cast<std::uint32_t>(table.word_ids.size())).first;
    }
    if (it != table.word_ids.end()) {
      words.push_back(it->second);
      unknown.push_back(0);
      continue;
    }
    const auto at =
        std::find_if(seen.begin(), seen.end(), [&](const std::string* x) { return *x == t; });
    unknown.push_back(static_cast<std::uint32_t>(at - seen.begin()));
    if (at == seen.end()) seen.push_back(&t);
    words.push_back(kNone);
  }
}

// The bag of `words` (from lookup_words). A non-const table gives new n-grams ids.
template <typename Table>
Bag make_bag(Table& table, const std::vector<std::uint32_t>& words,
             const std::vector<std::uint32_t>& unknown) {
  Bag out;
  std::vector<std::uint32_t> prefix(words.size(), kNone);  // id of the (n-1)-gram at i
  for (int k = 0; k < kOrders; ++k) {
    const std::size_t n = static_cast<std::size_t>(k) + 1;
    auto& list = out.grams[static_cast<std::size_t>(k)];
    for (std::size_t i = 0; i + n <= words.size(); ++i) {
      const std::uint32_t last = words[i + n - 1];
      std::uint32_t id = kNone;
      if (last != kNone && (k == 0 || prefix[i] != kNone)) {
        const std::uint64_t key = gram_key(k == 0 ? kNone : prefix[i], last);
        auto it = table.gram_ids.find(key);
        if constexpr (!std::is_const_v<Table>) {
          if (it == table.gram_ids.end()) {
            it = table.gram_ids.emplace(key, static_cast<std::uint32_t>(table.df.size())).first;
            table.df.push_back(0);
          }
        }
        if (it != table.gram_ids.end()) id = it->second;
      }
      prefix[i] = id;
      std::array<std::uint32_t, kOrders> seq{};
      seq.fill(kNone);
      for (std::size_t j = 0; j < n; ++j)
        seq[j] = words[i + j] != kNone ? words[i + j] : kNone - 1 - unknown[i + j];
      auto same = std::find_if(list.begin(), list.end(), [&](const Bag::Entry& e) {
        return id != kNone ? e.id == id : (e.id == kNone && e.words == seq);
      });
      if (same != list.end())
        ++same->count;
      else
        list.push_back({id, seq, 1});
    }
  }
  return out;
}

}  // namespace

struct CiderD::Impl {
  GramTable table;
  double log_images = 0.0;
  std::uint32_t end_word = kNone;  // the word id of kEndWord when count_end, else kNone

  // A reference's CIDEr-D vector: weights per order, sorted by n-gram id for the lookups, and
  // their norms (summed in first-occurrence order, as metrics.cpp sums them).
  struct Reference {
    std::array<std::vector<std::pair<std::uint32_t, double>>, kOrders> by_id;
    std::array<double, kOrders> norm{};
    double bigrams = 0.0;
  };
  std::unordered_map<std::int64_t, std::vector<Reference>> images;

  double idf(std::uint32_t id) const {
    const std::uint32_t d = id == kNone ? 0 : table.df[id];
    return log_images - std::log(static_cast<double>(std::max<std::uint32_t>(1, d)));
  }
};

CiderD::CiderD(const std::map<std::int64_t, std::vector<std::string>>& references, bool count_end)
    : impl_(std::make_unique<Impl>()) {
  if (references.empty()) throw InvalidArgument("CIDEr-D: no reference captions");
  Impl& m = *impl_;
  // Pass 1: every reference's bag, and the document frequencies (images, not captions).
  std::vector<std::pair<std::int64_t, std::vector<std::pair<Bag, std::size_t>>>> bags;
  bags.reserve(references.size());
  std::vector<std::uint32_t> words, unknown, mark;
  for (const auto& [image, captions] : references) {
    if (captions.empty())
      throw InvalidArgument(fmt::format("CIDEr-D: image {} has no reference caption", image));
    std::vector<std::pair<Bag, std::size_t>> image_bags;
    for (const auto& caption : captions) {
      auto tokens = tokenize_for_eval(caption);
      if (count_end) tokens.emplace_back(kEndWord);
      lookup_words(m.table, tokens, words, unknown);
      image_bags.emplace_back(make_bag(m.table, words, unknown), words.size());
    }
    mark.resize(m.table.df.size(), kNone);
    const auto stamp = static_cast<std::uint32_t>(bags.size());
    for (const auto& [bag, length] : image_bags)
      for (const auto& order : bag.grams)
        for (const auto& e : order)
          if (mark[e.id] != stamp) {
            mark[e.id] = stamp;
            ++m.table.df[e.id];
          }
    bags.emplace_back(image, std::move(image_bags));
  }
  if (count_end) m.end_word = m.table.word_ids.at(kEndWord);
  m.log_images = std::log(static_cast<double>(references.size()));
  // Pass 2: the references' vectors.
  for (auto& [image, image_bags] : bags) {
    std::vector<Impl::Reference>& refs = m.images[image];
    for (const auto& [bag, length] : image_bags) {
      Impl::Reference r;
      r.bigrams = bigram_count(length);
      for (int k = 0; k < kOrders; ++k) {
        auto& v = r.by_id[static_cast<std::size_t>(k)];
        for (const auto& e : bag.grams[static_cast<std::size_t>(k)]) {
          const double w = static_cast<double>(e.count) * m.idf(e.id);
          v.emplace_back(e.id, w);
          r.norm[static_cast<std::size_t>(k)] += w * w;
        }
        r.norm[static_cast<std::size_t>(k)] = std::sqrt(r.norm[static_cast<std::size_t>(k)]);
        std::sort(v.begin(), v.end());
      }
      refs.push_back(std::move(r));
    }
  }
}

CiderD::~CiderD() = default;
CiderD::CiderD(CiderD&&) noexcept = default;
CiderD& CiderD::operator=(CiderD&&) noexcept = default;

std::size_t CiderD::num_images() const { return impl_->images.size(); }

double CiderD::score(std::int64_t image_id, std::string_view caption) const {
  return score_tokens(image_id, tokenize_for_eval(caption));
}

double CiderD::score_tokens(std::int64_t image_id, const std::vector<std::string>& tokens) const {
  const Impl& m = *impl_;
  const auto image = m.images.find(image_id);
  if (image == m.images.end())
    throw InvalidArgument(fmt::format("CIDEr-D: image {} is not in the references", image_id));
  std::vector<std::uint32_t> words, unknown;
  lookup_words(m.table, tokens, words, unknown);  // const: no new ids
  if (m.end_word != kNone) {                      // every reference holds it
    words.push_back(m.end_word);
    unknown.push_back(0);
  }
  const Bag cand = make_bag(m.table, words, unknown);
  std::array<std::vector<double>, kOrders> weight;
  std::array<double, kOrders> norm{};
  for (int k = 0; k < kOrders; ++k) {
    const auto ks = static_cast<std::size_t>(k);
    for (const auto& e : cand.grams[ks]) {
      weight[ks].push_back(static_cast<double>(e.count) * m.idf(e.id));
      norm[ks] += weight[ks].back() * weight[ks].back();
    }
    norm[ks] = std::sqrt(norm[ks]);
  }
  const double cand_bigrams = bigram_count(words.size());
  std::array<double, kOrders> sum{};
  for (const Impl::Reference& ref : image->second) {
    const double delta = cand_bigrams - ref.bigrams;
    const double penalty = std::exp(-(delta * delta) / (2.0 * kSigma * kSigma));
    for (int k = 0; k < kOrders; ++k) {
      const auto ks = static_cast<std::size_t>(k);
      const auto& rv = ref.by_id[ks];
      double val = 0.0;
      for (std::size_t j = 0; j < cand.grams[ks].size(); ++j) {
        const std::uint32_t id = cand.grams[ks][j].id;
        if (id == kNone) continue;
        const auto it =
            std::lower_bound(rv.begin(), rv.end(), std::pair<std::uint32_t, double>(id, -HUGE_VAL));
        const double rw = it != rv.end() && it->first == id ? it->second : 0.0;
        val += std::min(weight[ks][j], rw) * rw;
      }
      if (norm[ks] != 0.0 && ref.norm[ks] != 0.0) val /= norm[ks] * ref.norm[ks];
      sum[ks] += val * penalty;
    }
  }
  double mean = 0.0;
  for (const double v : sum) mean += v;
  mean /= kOrders;
  mean /= static_cast<double>(image->second.size());
  return mean * kScale;
}

}  // namespace imcap
