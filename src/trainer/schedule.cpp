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

}  // namespace imcap::detail
