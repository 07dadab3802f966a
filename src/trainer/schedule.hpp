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

 private:
  const TrainerOptions& options_;
};

}  // namespace imcap::detail
