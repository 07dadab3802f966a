// The learning-rate schedules of TrainerOptions::lr_schedule (internal).
#pragma once

#include <cstddef>

#include <torch/optim/optimizer.h>

#include "imcap/checkpoint.hpp"
#include "imcap/trainer.hpp"

namespace imcap::detail {

/// Sets the learning rate of every parameter group (Adam or SGD).
void set_lr(torch::optim::Optimizer& optimizer, double lr);

/// Updates a run's learning rate (TrainingProgress::lr) at the end of each epoch; the plateau
/// schedule's memory (best_val_loss, bad_epochs) lives in the progress too, so that a resumed
/// run continues the schedule.
class LrSchedulePolicy {
 public:
  explicit LrSchedulePolicy(const TrainerOptions& options) : options_(options) {}
  /// After an epoch's validation: a new lowest loss resets the count of epochs without one;
  /// with kPlateau, lr_patience such epochs multiply the rate by lr_gamma. Returns whether
  /// the rate changed.
  bool after_validation(TrainingProgress& progress, double val_loss) const;
  /// After epoch `epoch` (0-based) ends: with kStep, every lr_step_epochs epochs multiply the
  /// rate by lr_gamma. Returns whether the rate changed.
  bool after_epoch(TrainingProgress& progress, std::size_t epoch) const;
  /// Whether the end-of-budget cut (TrainerOptions::lr_anneal_share) holds for the next
  /// step, by steps or epochs: (1 - share) of max_steps are done, or of the epochs (this one
  /// counted by its `batches_in_epoch`). A function of the progress alone, so that a resumed
  /// run cuts where the uninterrupted one did; the time budget's share is anneal_time's.
  bool anneal_due(const TrainingProgress& progress, std::size_t batches_in_epoch) const;
  /// Whether (1 - lr_anneal_share) of max_seconds has passed after `seconds`.
  bool anneal_time(double seconds) const;
  /// The rate the optimizer runs at: the progress's (any schedule's cuts), times
  /// lr_anneal_factor when `annealed`.
  double rate(const TrainingProgress& progress, bool annealed) const;

 private:
  const TrainerOptions& options_;
};

}  // namespace imcap::detail
