// Self-critical sequence training's loss for one batch (internal): samples, their rewards, the
// baseline and -(r - b) * log p (Rennie et al. 2017; "new SCST", Luo 2020).
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "imcap/model.hpp"
#include "imcap/trainer.hpp"
#include "trainer/reward.hpp"

namespace imcap::detail {

/// What scst_loss computed.
struct ScstLoss {
  torch::Tensor loss;              ///< scalar: -(r - b) * log p(sample), averaged over the samples
  std::int64_t samples = 0;        ///< captions drawn (images x ScstOptions::samples)
  double mean_reward = 0.0;        ///< of the samples
  double mean_baseline = 0.0;      ///< of the samples' baselines
  double reward_seconds = 0.0;     ///< spent scoring (samples and greedy captions)
  at::Tensor tokens;               ///< the samples (SampledCaptions::tokens)
  std::vector<double> advantages;  ///< r - b of each sample
};

/// The SCST loss of `features` ([U, E], the batch's distinct images, with autograd when the CNN
/// trains) for the images `image_ids`. Samples are drawn from `generator` (undefined: the
/// device's default generator) with the decoder in training mode (its dropout on, as the
/// gradient sees it); the greedy baseline runs in evaluation mode without autograd. With
/// `rescore_samples` (the default) and no dropout in the decoder, the samples are drawn without
/// autograd and their log-probabilities come from a teacher-forced pass over them
/// (Decoder::weighted_loss): the same loss and gradients, faster; otherwise autograd follows
/// every sampling step.
ScstLoss scst_loss(CaptionModel& model, const torch::Tensor& features,
                   const std::vector<std::int64_t>& image_ids, const ScstOptions& options,
                   const ScstReward& reward, at::Generator generator, bool rescore_samples = true);

/// With ScstOptions::relative_advantage, the least mean reward that the advantages are divided
/// by: 0.01 times the reward's weights (a batch whose samples match next to nothing would
/// otherwise have its few matches blown up).
inline double relative_advantage_floor(const ScstOptions& options) {
  return 0.01 * (options.cider_weight + options.bleu_weight);
}

/// Checks ScstOptions; throws InvalidArgument naming the field and what it must be.
void check_scst_options(const ScstOptions& options);

}  // namespace imcap::detail
