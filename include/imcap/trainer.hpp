// Trainer: notebook 2's training loop, done right: image-once batches, validation with
// BLEU-4/CIDEr, crash-safe checkpoints, exact resume, clean stops.
//
//   imcap::CaptionModel model(config, vocab);
//   imcap::CocoDataset train(..., imcap::ImageTransform::train()), val(...,
//   imcap::ImageTransform::eval()); imcap::TrainerOptions opts; opts.out_dir = "runs/coco";
//   opts.epochs = 3;
//   imcap::Trainer trainer(model, train, &val, opts);
//   imcap::TrainResult r = trainer.fit();    // writes runs/coco/{last,best}.imcap, log.jsonl
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "imcap/captioner.hpp"
#include "imcap/checkpoint.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/model.hpp"

namespace imcap {

class ProcessGroup;

/// Learning-rate schedules.
enum class LrSchedule {
  kNone,     ///< constant
  kStep,     ///< multiply by lr_gamma every lr_step_epochs epochs
  kPlateau,  ///< multiply by lr_gamma when the validation loss has not improved for lr_patience
             ///< epochs
};
/// Parses "none", "step" or "plateau"; throws InvalidArgument otherwise.
LrSchedule parse_lr_schedule(const std::string& name);
/// The name parse_lr_schedule accepts.
std::string to_string(LrSchedule schedule);

/// Optimizers.
enum class Optimizer {
  kAdam,  ///< Adam (Kingma and Ba), fused on the CPU
  kSgd,   ///< SGD with momentum
};
/// Parses "adam" or "sgd"; throws InvalidArgument otherwise.
Optimizer parse_optimizer(const std::string& name);
/// The name parse_optimizer accepts (and a checkpoint records).
std::string to_string(Optimizer optimizer);

/// What a step optimises.
enum class Objective {
  kCrossEntropy,  ///< teacher forcing: the mean cross-entropy of the reference captions' tokens
  kScst,          ///< self-critical sequence training (Rennie et al. 2017): sampled captions'
                  ///< CIDEr-D reward, minus a baseline, weighs their log-probabilities
};
/// Parses "xe" or "scst"; throws InvalidArgument otherwise.
Objective parse_objective(const std::string& name);
/// The name parse_objective accepts (and a checkpoint records).
std::string to_string(Objective objective);

/// What SCST subtracts from a sample's reward.
enum class ScstBaseline {
  kGreedy,  ///< the reward of the image's greedy caption (Rennie et al.'s SCST; one more pass)
  kMean,    ///< the mean reward of the image's other samples ("new SCST", Luo 2020; no pass)
};
/// Parses "greedy" or "mean"; throws InvalidArgument otherwise.
ScstBaseline parse_scst_baseline(const std::string& name);
/// The name parse_scst_baseline accepts.
std::string to_string(ScstBaseline baseline);

/// Options of self-critical training (TrainerOptions::objective kScst;
/// docs/training.md#self-critical-training-scst). Each step draws `samples` captions for each
/// distinct image of the batch, scores them against the image's training references, and minimises
/// -(r - b) * log p(caption), averaged over the samples. The defaults are imcap train's.
struct ScstOptions {
  int samples = 5;                              ///< captions drawn per image (>= 2 for kMean).
  ScstBaseline baseline = ScstBaseline::kMean;  ///< Default mean.
  double temperature = 1.0;                     ///< sampling temperature, > 0. Default 1.
  int top_k = 0;  ///< draw only from the k most likely words; 0 = all. Default 0.
  /// Most tokens per sampled caption, counted as SearchOptions::max_length counts them (the
  /// <end>, and the leading <start> that a Show and Tell model emits). Default 20, the search's
  /// default: samples reach as far as the captions that validation and predict write.
  int max_length = 20;
  double cider_weight = 1.0;  ///< weight of CIDEr-D (x10 scale, as reported) in the reward.
  double bleu_weight = 0.0;   ///< weight of sentence BLEU-4 in the reward. Default 0.
  /// The end of a caption counts as a last word of every sample and reference, so that the
  /// reward sees where a caption stops (self-critical.pytorch does so). Default true.
  bool reward_end = true;
  /// Weight of the cross-entropy of the batch's reference captions added to the SCST loss
  /// (teacher forcing on the same images), which holds the language model while the reward
  /// pulls it and lets SCST take a 4x larger learning rate; 0 = SCST alone. Default 1: ahead of
  /// SCST alone on four synthetic kinds of five from a model that cross-entropy still improved
  /// (docs/training.md#when-scst-pays-and-what-it-gains).
  double xe_weight = 1.0;
  /// Each advantage r - b is divided by the batch's mean reward (all ranks together; a mean
  /// below 0.01 times the reward's weights counts as that), so that SCST's pull against the
  /// cross-entropy term, and the size of its steps, do not depend on the reward's scale: a
  /// sample that scores 10 % above its baseline weighs the same on data whose CIDEr-D runs near
  /// 1 (COCO) as near 6. Default true.
  bool relative_advantage = true;
};

/// Options of Trainer. The defaults are imcap train's (docs/training.md#defaults).
struct TrainerOptions {
  std::string out_dir;  ///< where last.imcap, best.imcap and log.jsonl go. Required.
  int epochs = 3;       ///< passes over the training captions. Default 3.
  /// Captions per step, all processes together. Default 160: about 32 images of 5 captions
  /// image-major, where the CNN runs 1.4-1.5x more images per second than at 13 (64 captions;
  /// docs/training.md#defaults).
  std::size_t batch_size = 160;
  BatchMode batching = BatchMode::kImageMajor;  ///< how captions are grouped. Default image_major.
  Optimizer optimizer = Optimizer::kAdam;       ///< Default adam.
  double lr = 1e-3;                             ///< learning rate. Default 1e-3.
  double momentum = 0.9;                        ///< SGD momentum. Default 0.9.
  double weight_decay = 0.0;                    ///< L2 penalty. Default 0.
  double clip_norm = 5.0;  ///< clip the gradient norm to this; 0 = no clipping. Default 5.
  LrSchedule lr_schedule = LrSchedule::kNone;  ///< Default none.
  int lr_step_epochs = 5;                      ///< period of the step schedule, epochs. Default 5.
  double lr_gamma = 0.5;                       ///< factor of both schedules. Default 0.5.
  int lr_patience = 1;  ///< epochs without improvement before a plateau cut. Default 1.
  /// The last share of the run's budget trains at the rate times lr_anneal_factor: once
  /// (1 - share) of max_seconds has passed (counted from fit()'s start), of max_steps has been
  /// taken, or of the epochs has been trained, whichever comes first, the rate is cut, on top
  /// of any schedule. By steps and epochs it is a function of the progress, so that a resumed
  /// run cuts where the uninterrupted one did. 0 = no cut. Default 0.25: in seven 300-s runs
  /// from scratch (five kinds) it moved held-out CIDEr by +3.8 % on average, from -5.9 % to
  /// +16 %, and raised BLEU-4 in six (docs/training.md#the-end-of-budget-cut).
  double lr_anneal_share = 0.25;
  double lr_anneal_factor = 0.3;  ///< the cut's factor, in (0, 1]. Default 0.3.
  std::size_t log_interval = 50;  ///< steps between log lines. Default 50.
  std::uint64_t seed = 1;         ///< seeds initialisation order, batches, transforms. Default 1.
  int workers = 2;                ///< image decoding threads. Default 2.
  double max_seconds = 0.0;   ///< stop cleanly (and save) after this many seconds; 0 = no limit.
  std::size_t max_steps = 0;  ///< stop cleanly after this many steps in all; 0 = no limit.
  std::size_t val_max_images = 500;  ///< images captioned for BLEU/CIDEr each validation; 0 = all.
  /// Validate also every this many steps (0: only at the end of each epoch and at a stop).
  /// best.imcap keeps the state of the highest validation CIDEr, wherever it was seen. Default 0.
  std::size_t val_every_steps = 0;
  /// A run that stops early (max_seconds, max_steps, a signal) validates its final state, so
  /// that best.imcap is never older than the model. Default true.
  bool validate_at_stop = true;
  /// Search used for validation captions. Default greedy (beam 1), no <unk>.
  CaptionOptions val_search = [] {
    CaptionOptions greedy;
    greedy.beam_size = 1;
    return greedy;
  }();
  bool resume = false;   ///< continue from out_dir/last.imcap. Default false.
  bool progress = true;  ///< a progress bar on a terminal, plain lines otherwise.
  /// Data-parallel training (docs/distributed.md): the ranks of this group start from rank 0's
  /// parameters, each trains on its contiguous part of every batch of the shared plan, and
  /// their gradients are averaged so that each step equals one process's step on the whole
  /// batch. Only rank 0 writes last.imcap, best.imcap and log.jsonl (out_dir need not exist on
  /// the other machines; resume reads rank 0's last.imcap and sends it to the others).
  /// Default none: one process.
  std::shared_ptr<ProcessGroup> process_group;
  std::size_t bucket_bytes =
      25u << 20;  ///< gradient all-reduce bucket size, bytes. Default 25 MiB.
  /// What each step optimises. Default cross-entropy. SCST starts from a trained model (its
  /// references come from the training set; a batch's distinct images are its images, so
  /// image_major batches of batch_size captions hold about batch_size / 5 COCO images).
  Objective objective = Objective::kCrossEntropy;
  ScstOptions scst;  ///< used when objective is kScst
};

/// What fit() did.
struct TrainResult {
  std::size_t epochs_completed = 0;  ///< whole epochs done (resumed ones included)
  std::size_t steps = 0;             ///< optimizer steps in all (resumed ones included)
  double last_loss = 0.0;            ///< training loss of the last step
  /// SCST: the mean reward of the last step's samples (NaN for cross-entropy), and the share of
  /// this call's training time (validation left out) spent scoring rewards.
  double last_reward = NAN;
  double reward_share = 0.0;
  bool stopped_early = false;  ///< max_seconds, max_steps or a stop request ended it
  bool has_validation = false;
  Validation last_validation;       ///< the last validation, when there was one
  Validation best_validation;       ///< the one best.imcap was saved at
  double seconds = 0.0;             ///< wall time of this fit() call
  double captions = 0.0;            ///< captions trained on in this call (all processes together)
  double validation_seconds = 0.0;  ///< the part of `seconds` spent validating
  std::vector<double> losses;       ///< the training loss of every step of this call
};

/// Trains a CaptionModel.
class Trainer {
 public:
  /// `model`, `train` and `val` (optional) must outlive the trainer. Throws InvalidArgument on
  /// bad options or a dataset whose vocabulary differs from the model's.
  Trainer(CaptionModel& model, const CocoDataset& train, const CocoDataset* val,
          TrainerOptions options);
  ~Trainer();

  /// Runs the training loop; see TrainerOptions. Throws Error on a non-finite loss (naming the
  /// step; the last checkpoint is kept) and on I/O errors.
  TrainResult fit();
  /// Validation loss and captions on the validation set (also used by fit()).
  Validation validate();
  /// Asks the running fit() (or, before one, the next) to stop after the current step, save
  /// last.imcap and validate the final state, as a time limit does. Thread-safe: call it from
  /// another thread (a stop button). The request ends with that fit().
  void request_stop();
  /// Installs SIGINT and SIGTERM handlers: the first such signal asks every running fit() to
  /// stop as request_stop() does; a second one ends the process at once.
  static void install_signal_handlers();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace imcap
