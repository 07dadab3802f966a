// One training step (internal): forward, loss, backward, the data-parallel gradient average,
// clipping and the optimizer's update.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <torch/optim/optimizer.h>

#include "imcap/checkpoint.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/distributed.hpp"
#include "imcap/model.hpp"
#include "imcap/trainer.hpp"
#include "trainer/reward.hpp"

namespace imcap::detail {

/// What a step did.
struct StepOutcome {
  /// The batch's loss (all ranks together): cross-entropy, the mean per token; SCST, the mean
  /// per sample (divided by the mean reward with ScstOptions::relative_advantage), plus
  /// ScstOptions::xe_weight times `xe_loss`.
  double loss = 0.0;
  /// SCST with ScstOptions::xe_weight > 0 (NaN otherwise): the cross-entropy of the batch's
  /// references, the mean per token, all ranks together.
  double xe_loss = NAN;
  /// Captions trained on (all ranks together): the batch's references, or SCST's samples.
  double captions = 0.0;
  bool stop = false;  ///< with a process group: some rank asked to stop at this step
  /// with a process group: some rank's clock says the end-of-budget cut of the rate is due
  bool anneal = false;
  /// SCST (NaN otherwise): the samples' mean reward and baseline (all ranks together), and the
  /// seconds this rank spent scoring them.
  double reward = NAN, baseline = NAN, reward_seconds = 0.0;
};

/// The step of Trainer::fit. Owns the optimizer over the model's trainable parameters.
class TrainStep {
 public:
  /// `images`: the batches hold images (not precomputed features), so trainable CNN
  /// convolutions run.
  /// `reward`: SCST's reward (required when options.objective is kScst; it must outlive the
  /// step).
  TrainStep(CaptionModel& model, const TrainerOptions& options, ProcessGroup* group, bool images,
            const ScstReward* reward = nullptr);

  /// Trains on `batch` (this rank's part of the step's batch; it may be empty when the batch
  /// has fewer captions or images than there are ranks: the rank then only joins the
  /// collectives). `want_stop`: this rank wants the run to stop (time, signal); with a group
  /// all ranks learn it in the step's one small all-reduce, so that all stop at one step.
  /// `want_anneal`: likewise for the end-of-budget cut of the rate that a time budget decides.
  /// `at` (the progress before the step) seeds dropout, per rank. Throws Error when the loss is
  /// not finite, before the update (the parameters stay as they were), naming the step and
  /// `last_checkpoint` when it exists.
  StepOutcome run(const Batch& batch, bool want_stop, bool want_anneal, const TrainingProgress& at,
                  const std::string& last_checkpoint);

  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const std::vector<torch::Tensor>& params() const { return params_; }

 private:
  CaptionModel& model_;
  const TrainerOptions& options_;
  ProcessGroup* group_;
  const ScstReward* reward_;
  int rank_ = 0, world_ = 1;
  bool channels_last_ = false;  // images go to the CNN in channels_last (see the constructor)
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

}  // namespace imcap::detail
