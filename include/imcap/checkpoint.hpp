// Checkpoints: a `.imcap` model file that also holds where its training run stands, so that
// `imcap train --resume` (Trainer with TrainerOptions::resume) continues exactly where it
// stopped. The Trainer writes OUT/last.imcap and OUT/best.imcap this way; both load as plain
// models too (docs/model-format.md).
//
//   imcap::Checkpoint checkpoint;
//   imcap::CaptionModel model = imcap::load_checkpoint("runs/coco/last.imcap", torch::kCPU,
//                                                      checkpoint);
//   std::cout << "step " << checkpoint.progress.global_step << "\n";
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <torch/types.h>

#include "imcap/model.hpp"
#include "imcap/weights.hpp"

namespace imcap {

/// What a model file holds beside the model for a training run: JSON text plus tensors, stored
/// as the metadata key "training" and the tensors "training.<name>". Empty in a plain model file.
struct TrainingState {
  std::string json;   ///< JSON text (a Checkpoint's progress); empty = none
  TensorMap tensors;  ///< stored under "training." in the file
};

/// One validation's scores.
struct Validation {
  double loss = 0.0;        ///< mean cross-entropy per token, teacher forcing
  double perplexity = 0.0;  ///< exp(loss)
  double bleu4 = 0.0;       ///< corpus BLEU-4 of the captions found by the validation search
  double cider = 0.0;       ///< CIDEr-D of those captions
  std::size_t images = 0;   ///< images captioned
};

/// Where a training run stands. The next batch to train is batch `step_in_epoch` of epoch
/// `epoch` (both 0-based), after `global_step` batches in all.
struct TrainingProgress {
  std::size_t epoch = 0;
  std::size_t step_in_epoch = 0;
  std::size_t global_step = 0;
  double lr = 0.0;  ///< the learning rate now (after any schedule's cuts)
  /// What the run was started with; a resume must use the same (its batches depend on them).
  std::string optimizer;  ///< "adam" or "sgd"
  std::uint64_t seed = 0;
  std::size_t batch_size = 0;
  std::string batching;          ///< "padded", "same_length" or "image_major"
  std::string objective = "xe";  ///< "xe" or "scst" (files from before SCST: "xe")
  /// The plateau schedule's memory: the lowest validation loss and the epochs since it.
  double best_val_loss = INFINITY;
  std::size_t bad_epochs = 0;
  /// The validation best.imcap was saved at, once there was one.
  std::optional<Validation> best;
};

/// A checkpoint's training state: the progress and the optimizer's own state (LibTorch's
/// serialized archive of its moments), stored as the uint8 tensor "training.optimizer".
struct Checkpoint {
  TrainingProgress progress;
  std::string optimizer_state;
};

/// The progress as the JSON text a file stores, and back. training_progress_from_json checks
/// every key for its type and range and throws FormatError naming `file` and the key
/// ("run/last.imcap: training.lr: expected a finite number > 0, got -1.0"), never a raw JSON
/// error. Whether the values fit a particular run (its epochs, its batches) is the Trainer's
/// check.
std::string training_progress_to_json(const TrainingProgress& progress);
TrainingProgress training_progress_from_json(const std::string& json, const std::string& file);

/// The TrainingState a file holds for a checkpoint, and back (FormatError naming `file` when
/// the state is missing or malformed).
TrainingState to_training_state(const Checkpoint& checkpoint);
Checkpoint checkpoint_from_training_state(const TrainingState& state, const std::string& file);

/// Writes the model and the checkpoint crash-safely (temporary file, fsync, rename).
void save_checkpoint(const std::string& path, const CaptionModel& model,
                     const Checkpoint& checkpoint);
/// Loads a checkpoint file onto `device`: returns the model and fills `checkpoint`. Throws what
/// CaptionModel::load throws, and FormatError when the file holds no training state.
CaptionModel load_checkpoint(const std::string& path, const torch::Device& device,
                             Checkpoint& checkpoint);

}  // namespace imcap
