// Validation of a training run (internal): the teacher-forced loss and the captions' BLEU-4 and
// CIDEr-D on the validation set.
#pragma once

#include "imcap/checkpoint.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/distributed.hpp"
#include "imcap/model.hpp"
#include "imcap/trainer.hpp"

namespace imcap::detail {

/// The encoder's output for a batch: the CNN and head on images [U, 3, H, W], or the head alone
/// on precomputed features [U, C] (a dataset with CocoDatasetOptions::features).
torch::Tensor encode(CaptionModel& model, const torch::Tensor& images);

/// Validates `model` on the first options.val_max_images images of `val` (all with 0): the
/// mean cross-entropy per token and the captions of options.val_search, scored against each
/// image's references. With a process group each rank captions every world-th chunk of 32
/// images and the ranks exchange their captions, so that all agree on the scores (and so on
/// the schedule and on best.imcap). Leaves the model in evaluation mode.
Validation validate(CaptionModel& model, const CocoDataset& val, const TrainerOptions& options,
                    ProcessGroup* group);

}  // namespace imcap::detail
