// Learning-rate schedules (trainer/schedule.hpp).
#include "trainer/schedule.hpp"

#include <algorithm>

#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

namespace imcap::detail {

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&group.options())) adam->lr(lr);
    if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) sgd->lr(lr);
  }
}

bool LrSchedulePolicy::after_validation(TrainingProgress& p, double val_loss) const {
  if (val_loss < p.best_val_loss) {
    p.best_val_loss = val_loss;
    p.bad_epochs = 0;
    return false;
  }
  if (++p.bad_epochs >= static_cast<std::size_t>(std::max(0, options_.lr_patience)) &&
      options_.lr_schedule == LrSchedule::kPlateau) {
    p.lr *= options_.lr_gamma;
    p.bad_epochs = 0;
    return true;
  }
  return false;
}

bool LrSchedulePolicy::after_epoch(TrainingProgress& p, std::size_t epoch) const {
  if (options_.lr_schedule != LrSchedule::kStep ||
      (epoch + 1) % static_cast<std::size_t>(std::max(1, options_.lr_step_epochs)) != 0)
    return false;
  p.lr *= options_.lr_gamma;
  return true;
}

bool LrSchedulePolicy::anneal_time(double seconds) const {
  const double share = options_.lr_anneal_share;
  return share > 0 && options_.max_seconds > 0 && seconds >= (1.0 - share) * options_.max_seconds;
}

bool LrSchedulePolicy::anneal_due(const TrainingProgress& p, std::size_t batches_in_epoch) const {
  const double share = options_.lr_anneal_share;
  if (!(share > 0)) return false;
  const double keep = 1.0 - share;
  if (options_.max_steps > 0 &&
      static_cast<double>(p.global_step) >= keep * static_cast<double>(options_.max_steps))
    return true;
  const double epochs_done = static_cast<double>(p.epoch) +
                             (batches_in_epoch > 0 ? static_cast<double>(p.step_in_epoch) /
                                                         static_cast<double>(batches_in_epoch)
                                                   : 0.0);
  return epochs_done >= keep * static_cast<double>(std::max(1, options_.epochs));
}

double LrSchedulePolicy::rate(const TrainingProgress& p, bool annealed) const {
  return annealed ? p.lr * options_.lr_anneal_factor : p.lr;
}

}  // namespace imcap::detail
