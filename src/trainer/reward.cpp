// The reward of self-critical training (trainer/reward.hpp).
#include "trainer/reward.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "detail/bleu.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {
namespace {

std::map<std::int64_t, std::vector<std::string>> references_of(const CocoDataset& train) {
  std::map<std::int64_t, std::vector<std::string>> refs;
  for (const auto id : train.image_ids()) refs[id] = train.references(id);
  return refs;
}

// An n-gram as one string key (eval tokens hold no '\x1f').
std::string gram_key(const std::vector<std::string>& words, std::size_t at, std::size_t n) {
  std::string key = words[at];
  for (std::size_t j = 1; j < n; ++j) (key += '\x1f') += words[at + j];
  return key;
}

}  // namespace

ScstReward::ScstReward(const CocoDataset& train, const ScstOptions& options)
    : cider_(references_of(train), options.reward_end),
      cider_weight_(options.cider_weight),
      bleu_weight_(options.bleu_weight),
      count_end_(options.reward_end),
      end_id_(train.vocabulary().end_id()) {
  const Vocabulary& vocab = train.vocabulary();
  words_of_id_.resize(static_cast<std::size_t>(vocab.size()));
  for (std::int64_t id = 0; id < static_cast<std::int64_t>(vocab.size()); ++id)
    words_of_id_[static_cast<std::size_t>(id)] = tokenize_for_eval(vocab.decode({id}));
  if (bleu_weight_ != 0.0)
    for (const auto id : train.image_ids()) {
      auto& refs = references_[id];
      for (const auto& text : train.references(id)) {
        refs.push_back(tokenize_for_eval(text));
        if (count_end_) refs.back().emplace_back(CiderD::kEndWord);
      }
    }
}

std::vector<std::string> ScstReward::eval_tokens(const std::int64_t* ids, std::size_t n) const {
  std::vector<std::string> tokens;
  for (std::size_t t = 0; t < n; ++t) {
    const std::int64_t id = ids[t];
    if (id == end_id_) break;
    if (id < 0 || id >= static_cast<std::int64_t>(words_of_id_.size()))
      throw InvalidArgument(fmt::format("SCST reward: token id {} is not in the vocabulary of {}",
                                        id, words_of_id_.size()));
    const auto& words = words_of_id_[static_cast<std::size_t>(id)];
    tokens.insert(tokens.end(), words.begin(), words.end());
  }
  return tokens;
}

double ScstReward::bleu4(std::int64_t image_id, const std::vector<std::string>& tokens) const {
  const auto found = references_.find(image_id);
  if (found == references_.end())
    throw InvalidArgument(
        fmt::format("SCST reward: image {} has no training references", image_id));
  std::array<std::int64_t, kBleuOrders> guess{}, correct{};
  std::int64_t closest = -1;
  const auto length = static_cast<std::int64_t>(tokens.size());
  for (std::size_t k = 0; k < static_cast<std::size_t>(kBleuOrders); ++k) {
    const std::size_t n = k + 1;
    if (tokens.size() < n) break;
    // Candidate counts, clipped by the largest count in any one reference.
    std::map<std::string, std::int64_t> counts, clip;
    for (std::size_t i = 0; i + n <= tokens.size(); ++i) ++counts[gram_key(tokens, i, n)];
    for (const auto& ref : found->second) {
      std::map<std::string, std::int64_t> in_ref;
      for (std::size_t i = 0; i + n <= ref.size(); ++i) {
        auto key = gram_key(ref, i, n);
        if (counts.count(key) != 0) ++in_ref[std::move(key)];
      }
      for (const auto& [key, c] : in_ref) clip[key] = std::max(clip[key], c);
    }
    guess[k] = static_cast<std::int64_t>(tokens.size() - n + 1);
    for (const auto& [key, c] : counts) {
      const auto it = clip.find(key);
      if (it != clip.end()) correct[k] += std::min(c, it->second);
    }
  }
  // The effective reference length: the closest, ties to the shorter (option "closest").
  for (const auto& ref : found->second) {
    const auto r = static_cast<std::int64_t>(ref.size());
    if (closest < 0 || std::abs(r - length) < std::abs(closest - length) ||
        (std::abs(r - length) == std::abs(closest - length) && r < closest))
      closest = r;
  }
  return bleu_from_counts(length, closest, guess, correct)[kBleuOrders - 1];
}

double ScstReward::score_ids(std::int64_t image_id, const std::int64_t* ids, std::size_t n) const {
  std::vector<std::string> tokens = eval_tokens(ids, n);
  double reward = 0.0;
  if (cider_weight_ != 0.0) reward += cider_weight_ * cider_.score_tokens(image_id, tokens);
  if (bleu_weight_ != 0.0) {
    if (count_end_) tokens.emplace_back(CiderD::kEndWord);  // as the references hold it
    reward += bleu_weight_ * bleu4(image_id, tokens);
  }
  return reward;
}

std::vector<double> ScstReward::score(const at::Tensor& tokens,
                                      const std::vector<std::int64_t>& image_of_row) const {
  if (tokens.dim() != 2 || tokens.scalar_type() != at::kLong || !tokens.device().is_cpu() ||
      tokens.size(0) != static_cast<std::int64_t>(image_of_row.size()))
    throw InvalidArgument(
        fmt::format("SCST reward: expected [{}, L] int64 tokens on the CPU, got [{}] {} on {}",
                    image_of_row.size(), fmt::join(tokens.sizes(), ", "),
                    c10::toString(tokens.scalar_type()), tokens.device().str()));
  const at::Tensor rows = tokens.contiguous();
  const std::int64_t width = rows.size(1);
  const std::int64_t* data = rows.data_ptr<std::int64_t>();
  std::vector<double> out(image_of_row.size());
  // Exceptions leave at::parallel_for on its calling thread.
  at::parallel_for(0, static_cast<std::int64_t>(out.size()), 4,
                   [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t r = begin; r < end; ++r)
                       out[static_cast<std::size_t>(r)] =
                           score_ids(image_of_row[static_cast<std::size_t>(r)], data + r * width,
                                     static_cast<std::size_t>(width));
                   });
  return out;
}

}  // namespace imcap::detail
