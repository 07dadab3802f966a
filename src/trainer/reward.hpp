// The reward of self-critical training (internal): CIDEr-D, plus optionally sentence BLEU-4, of
// generated captions against their image's training references, scored natively and in
// parallel.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/Tensor.h>

#include "imcap/coco_dataset.hpp"
#include "imcap/metrics.hpp"
#include "imcap/trainer.hpp"
#include "imcap/vocabulary.hpp"

namespace imcap::detail {

/// Scores token-id captions as imcap eval scores their decoded text (tested).
class ScstReward {
 public:
  /// The references and CIDEr-D's document frequencies are those of every image of `train`.
  ScstReward(const CocoDataset& train, const ScstOptions& options);

  /// The reward of each row of `tokens` ([N, L] int64 on the CPU: ids up to a first <end>,
  /// anything after it ignored) for the image `image_of_row[i]`. Rows are scored in parallel
  /// on Torch's intra-op threads.
  std::vector<double> score(const at::Tensor& tokens,
                            const std::vector<std::int64_t>& image_of_row) const;
  /// The reward of one caption of ids (a Hypothesis' tokens, say).
  double score_ids(std::int64_t image_id, const std::int64_t* ids, std::size_t n) const;
  /// The evaluation tokens of ids, as tokenize_for_eval(vocab.decode(ids)) gives them.
  std::vector<std::string> eval_tokens(const std::int64_t* ids, std::size_t n) const;

 private:
  double bleu4(std::int64_t image_id, const std::vector<std::string>& tokens) const;

  CiderD cider_;
  double cider_weight_, bleu_weight_;
  bool count_end_;
  std::int64_t end_id_;
  std::vector<std::vector<std::string>> words_of_id_;  // eval tokens of each vocabulary id
  // With a BLEU weight: each image's references as eval tokens (kEndWord closing them when
  // counted).
  std::unordered_map<std::int64_t, std::vector<std::vector<std::string>>> references_;
};

}  // namespace imcap::detail
