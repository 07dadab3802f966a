#include "imcap/trainer.hpp"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "detail/enum_names.hpp"
#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "imcap/distributed.hpp"
#include "imcap/error.hpp"
#include "trainer/progress.hpp"
#include "trainer/reward.hpp"
#include "trainer/schedule.hpp"
#include "trainer/scst.hpp"
#include "trainer/step.hpp"
#include "trainer/stop.hpp"
#include "trainer/validation.hpp"

namespace imcap {

LrSchedule parse_lr_schedule(const std::string& name) {
  return detail::parse_enum<LrSchedule>(name);
}

std::string to_string(LrSchedule schedule) { return detail::enum_name(schedule); }

Optimizer parse_optimizer(const std::string& name) { return detail::parse_enum<Optimizer>(name); }

std::string to_string(Optimizer optimizer) { return detail::enum_name(optimizer); }

Objective parse_objective(const std::string& name) { return detail::parse_enum<Objective>(name); }

std::string to_string(Objective objective) { return detail::enum_name(objective); }

ScstBaseline parse_scst_baseline(const std::string& name) {
  return detail::parse_enum<ScstBaseline>(name);
}

std::string to_string(ScstBaseline baseline) { return detail::enum_name(baseline); }

void Trainer::install_signal_handlers() { detail::install_stop_signal_handlers(); }

// The run: its parts (trainer/) and where it stands (`progress`, what checkpoints record).
struct Trainer::Impl {
  CaptionModel& model;
  const CocoDataset& train;
  const CocoDataset* val;
  TrainerOptions options;
  ProcessGroup* group;  // null: one process
  int rank = 0;
  DataLoader loader;
  std::unique_ptr<detail::ScstReward> reward;  // SCST only
  detail::TrainStep step;
  detail::LrSchedulePolicy schedule;
  TrainingProgress progress;
  detail::TrainLog log;
  std::atomic<bool> stop_requested{false};

  Impl(CaptionModel& m, const CocoDataset& t, const CocoDataset* v, TrainerOptions o)
      : model(m),
        train(t),
        val(v),
        options(std::move(o)),
        group(options.process_group.get()),
        rank(group != nullptr ? group->rank() : 0),
        loader(t, loader_options(options, m.device())),
        reward(options.objective == Objective::kScst
                   ? std::make_unique<detail::ScstReward>(t, options.scst)
                   : nullptr),
        step(m, options, group, !t.has_features(), reward.get()),
        schedule(options) {
    progress.lr = options.lr;
    progress.optimizer = to_string(options.optimizer);
    progress.seed = options.seed;
    progress.batch_size = options.batch_size;
    progress.batching = to_string(options.batching);
    progress.objective = to_string(options.objective);
  }

  // Rank 0 writes the log and the checkpoints, and reports progress.
  bool writer() const { return rank == 0; }

  static DataLoaderOptions loader_options(const TrainerOptions& o, const torch::Device& device) {
    DataLoaderOptions d;
    // Page-locked batches: the copies to the GPU run without blocking the host.
    d.pin_memory = device.is_cuda();
    if (o.process_group) {
      d.shard_count = static_cast<std::size_t>(o.process_group->world_size());
      d.shard_index = static_cast<std::size_t>(o.process_group->rank());
    }
    d.batch_size = o.batch_size;
    d.mode = o.batching;
    d.seed = o.seed;
    d.workers = o.workers;
    return d;
  }

  std::string path(const char* name) const { return detail::join_path(options.out_dir, name); }

  std::string optimizer_state() {
    torch::serialize::OutputArchive archive;
    step.optimizer().save(archive);
    std::ostringstream bytes;
    archive.save_to(bytes);
    return bytes.str();
  }

  // Saves OUT/name (rank 0) to resume at batch `next_step` of epoch `next_epoch`.
  void save(const char* name, std::size_t next_epoch, std::size_t next_step) {
    if (!writer()) return;
    Checkpoint c;
    c.progress = progress;
    c.progress.epoch = next_epoch;
    c.progress.step_in_epoch = next_step;
    c.optimizer_state = optimizer_state();
    save_checkpoint(path(name), model, c);
  }

  // Rank 0's resume: the checkpoint's weights into the model, then its progress.
  void restore(const std::string& file) {
    Checkpoint c;
    const CaptionModel saved = load_checkpoint(file, model.device(), c);
    if (model_config_to_json(saved.config()) != model_config_to_json(model.config()))
      throw InvalidArgument(
          fmt::format("{}: its architecture differs from the model being trained", file));
    if (saved.vocab() != model.vocab())
      throw InvalidArgument(
          fmt::format("{}: its vocabulary differs from the model being trained", file));
    resume(c, file);
    torch::NoGradGuard no_grad;
    auto copy = [](torch::nn::Module& to, const torch::nn::Module& from) {
      auto src_p = from.named_parameters();
      for (auto& p : to.named_parameters()) p.value().copy_(src_p[p.key()]);
      auto src_b = from.named_buffers();
      for (auto& b : to.named_buffers()) b.value().copy_(src_b[b.key()]);
    };
    copy(*model.encoder(), *saved.encoder());
    copy(model.decoder_module(), saved.decoder_module());
  }

  // Continues from a checkpoint's progress and optimizer state, after checking that they fit
  // this run: the same optimizer, batches and seed, and a place inside its epochs.
  void resume(const Checkpoint& c, const std::string& file) {
    const TrainingProgress& q = c.progress;
    if (q.optimizer != progress.optimizer || q.batch_size != progress.batch_size ||
        q.seed != progress.seed || q.batching != progress.batching ||
        q.objective != progress.objective)
      throw InvalidArgument(fmt::format(
          "{}: was trained with objective {}, optimizer {}, batch size {}, batching {} and seed "
          "{}: resume with the same",
          file, q.objective, q.optimizer, q.batch_size, q.batching, q.seed));
    const auto refuse = [&](const char* key, const std::string& expected, std::size_t got) {
      throw FormatError(
          fmt::format("{}: training.{}: expected {}, got {}", file, key, expected, got));
    };
    const auto epochs = static_cast<std::size_t>(options.epochs);
    if (q.epoch > epochs)
      throw InvalidArgument(fmt::format(
          "{}: training.epoch: the checkpoint has done {} epochs, more than this run's {}: resume "
          "with at least {} epochs",
          file, q.epoch, epochs, q.epoch));
    const std::size_t batches = q.epoch < epochs ? loader.batches_in_epoch(q.epoch) : 0;
    if (batches == 0 && q.step_in_epoch != 0)
      refuse("step_in_epoch", "0 (the checkpoint is at the end of the run's last epoch)",
             q.step_in_epoch);
    if (batches > 0 && q.step_in_epoch >= batches)
      refuse("step_in_epoch",
             fmt::format("an integer from 0 to {} (epoch {} has {} batches of this training set)",
                         batches - 1, q.epoch + 1, batches),
             q.step_in_epoch);
    std::size_t steps_before = q.step_in_epoch;
    for (std::size_t e = 0; e < q.epoch; ++e) steps_before += loader.batches_in_epoch(e);
    if (q.global_step != steps_before)
      refuse("global_step",
             fmt::format("{} (the batches of the {} epochs before, plus step_in_epoch {}, of this "
                         "training set)",
                         steps_before, q.epoch, q.step_in_epoch),
             q.global_step);
    if (q.bad_epochs > q.epoch)
      refuse("bad_epochs", fmt::format("an integer from 0 to {} (the epochs done)", q.epoch),
             q.bad_epochs);
    load_optimizer_state(c.optimizer_state, file, q.global_step);
    progress = q;
    detail::set_lr(step.optimizer(), progress.lr);
  }

  // The optimizer's state from a checkpoint, checked against the parameters it updates.
  void load_optimizer_state(const std::string& bytes, const std::string& file, std::size_t steps) {
    const std::string key = "training.optimizer";
    try {
      std::istringstream in(bytes);
      torch::serialize::InputArchive archive;
      archive.load_from(in);
      step.optimizer().load(archive);
    } catch (const c10::Error& e) {
      throw FormatError(fmt::format("{}: {}: not a state of the {} optimizer for this model: {}",
                                    file, key, to_string(options.optimizer),
                                    e.what_without_backtrace()));
    }
    const auto& state = step.optimizer().state();
    for (const auto& p : step.params()) {
      const auto it = state.find(detail::optimizer_state_key(p));
      if (it == state.end()) continue;  // a parameter not stepped yet
      const auto shape_fits = [&](const torch::Tensor& t) {
        return !t.defined() || t.sizes() == p.sizes();
      };
      bool fits = true;
      if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get()))
        fits = adam->step() >= 0 && static_cast<std::size_t>(adam->step()) <= steps &&
               shape_fits(adam->exp_avg()) && shape_fits(adam->exp_avg_sq()) &&
               shape_fits(adam->max_exp_avg_sq());
      if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(it->second.get()))
        fits = shape_fits(sgd->momentum_buffer());
      if (!fits)
        throw FormatError(fmt::format(
            "{}: {}: the state of a parameter of shape {} does not fit it (moment shapes, or a "
            "step count beyond global_step {})",
            file, key, fmt::join(p.sizes(), "x"), steps));
    }
  }

  // Every rank starts from rank 0's weights (and, on resume, its progress and optimizer state).
  void synchronise_start(const std::string& last) {
    std::vector<torch::Tensor> state;
    for (auto* m :
         {static_cast<torch::nn::Module*>(model.encoder().get()), &model.decoder_module()}) {
      for (auto& p : m->parameters()) state.push_back(p);
      for (auto& b : m->buffers()) state.push_back(b);
    }
    group->broadcast(state, 0);
    if (!options.resume) return;
    std::string progress_json, optimizer_bytes;
    if (writer()) {
      progress_json = training_progress_to_json(progress);
      optimizer_bytes = optimizer_state();
    }
    progress_json = group->broadcast_bytes(progress_json, 0);
    optimizer_bytes = group->broadcast_bytes(optimizer_bytes, 0);
    if (!writer())
      resume({training_progress_from_json(progress_json, last), optimizer_bytes}, last);
  }
};

Trainer::Trainer(CaptionModel& model, const CocoDataset& train, const CocoDataset* val,
                 TrainerOptions options) {
  if (options.out_dir.empty()) throw InvalidArgument("trainer: out_dir is required");
  if (options.process_group &&
      options.batch_size < static_cast<std::size_t>(options.process_group->world_size()))
    throw InvalidArgument(fmt::format(
        "trainer: batch size {} is smaller than the {} processes: each step needs a caption for "
        "each (the batch size counts all processes together)",
        options.batch_size, options.process_group->world_size()));
  if (options.epochs < 1)
    throw InvalidArgument(fmt::format("trainer: epochs = {} must be at least 1", options.epochs));
  if (!(options.lr > 0))
    throw InvalidArgument(fmt::format("trainer: learning rate {} must be positive", options.lr));
  if (!(options.lr_anneal_share >= 0 && options.lr_anneal_share < 1))
    throw InvalidArgument(
        fmt::format("trainer: lr_anneal_share = {} must be in [0, 1) (0: no end-of-budget cut)",
                    options.lr_anneal_share));
  if (!(options.lr_anneal_factor > 0 && options.lr_anneal_factor <= 1))
    throw InvalidArgument(
        fmt::format("trainer: lr_anneal_factor = {} must be in (0, 1]", options.lr_anneal_factor));
  if (options.optimizer != Optimizer::kAdam && options.optimizer != Optimizer::kSgd)
    throw InvalidArgument(fmt::format("trainer: optimizer {} is not one of: adam, sgd",
                                      static_cast<int>(options.optimizer)));
  if (options.objective == Objective::kScst) {
    detail::check_scst_options(options.scst);
    if (options.batching != BatchMode::kImageMajor)
      throw InvalidArgument(fmt::format(
          "trainer: SCST needs image_major batching (each image once per epoch, whole on one "
          "process), got {}",
          to_string(options.batching)));
  } else if (options.objective != Objective::kCrossEntropy) {
    throw InvalidArgument(fmt::format("trainer: objective {} is not one of: xe, scst",
                                      static_cast<int>(options.objective)));
  }
  if (train.vocabulary() != model.vocab())
    throw InvalidArgument("trainer: the training set's vocabulary differs from the model's");
  if (val != nullptr && val->vocabulary() != model.vocab())
    throw InvalidArgument("trainer: the validation set's vocabulary differs from the model's");
  for (const CocoDataset* d : {&train, val}) {
    if (d == nullptr || !d->has_features() || d->image_ids().empty()) continue;
    std::mt19937_64 rng(0);
    const auto row = d->image(d->image_ids().front(), rng);
    if (model.decoder_kind() == DecoderKind::kAttention && row.dim() == 1)
      throw InvalidArgument(
          "trainer: the precomputed features are pooled vectors, and an attention model needs "
          "the CNN's grid: compute grids with imcap features --spatial, or train on the images");
    if (model.decoder_kind() != DecoderKind::kAttention && row.dim() != 1)
      throw InvalidArgument(
          "trainer: the precomputed features are grids (imcap features --spatial), and a Show "
          "and Tell model needs pooled vectors: compute them with imcap features");
    if (row.size(row.dim() - 1) != model.encoder()->feature_dim())
      throw InvalidArgument(
          fmt::format("trainer: the precomputed features have {} values per image, the model's "
                      "CNN ({}) gives {}",
                      row.size(row.dim() - 1), to_string(model.config().encoder.arch),
                      model.encoder()->feature_dim()));
    if (model.encoder()->backbone->trainable_stages() > 0)
      throw InvalidArgument(
          "trainer: training on precomputed features needs a frozen CNN (trainable stages 0)");
  }
  impl_ = std::make_unique<Impl>(model, train, val, std::move(options));
  Impl& s = *impl_;
  const auto last = s.path("last.imcap");
  if (s.writer()) {
    detail::create_directories(s.options.out_dir);
    for (const char* name : {"last.imcap", "best.imcap"})
      detail::remove_stale_temp_files(s.path(name));
    if (s.options.resume) {
      if (!detail::path_exists(last))
        throw IoError(fmt::format("{}: no checkpoint to resume from", last));
      s.restore(last);
    }
    s.log.open(s.path("log.jsonl"), /*append=*/s.options.resume);
  }
  if (s.group != nullptr) s.synchronise_start(last);
}

Trainer::~Trainer() = default;

void Trainer::request_stop() { impl_->stop_requested = true; }

Validation Trainer::validate() {
  Impl& s = *impl_;
  if (s.val == nullptr) throw InvalidArgument("trainer: no validation set");
  return detail::validate(s.model, *s.val, s.options, s.group);
}

TrainResult Trainer::fit() {
  Impl& s = *impl_;
  const auto& o = s.options;
  TrainingProgress& p = s.progress;
  TrainResult result;
  const auto t0 = detail::Clock::now();
  const detail::StopRequest stop_requested(s.stop_requested);
  const std::size_t per_epoch = s.loader.batches_per_epoch();
  detail::ProgressLine line(o.progress && s.writer(), o, per_epoch, p.global_step, t0);
  bool stop = false;
  // The step this call last validated at (validate_now sets it with result.last_validation).
  std::size_t validated_at = SIZE_MAX;
  double reward_seconds = 0.0;  // SCST: this rank's time scoring rewards
  // The optimizer runs at p.lr until the end-of-budget cut (which an earlier fit() of this
  // trainer may have left in place).
  bool annealed = false, time_due = false;
  detail::set_lr(s.step.optimizer(), p.lr);
  auto validate_now = [&](const std::string& when) {
    line.interrupt();
    const auto started = detail::Clock::now();
    const Validation v = validate();
    result.validation_seconds += detail::seconds_since(started);
    line.interrupt();  // the captions/s of the progress line are those of training
    validated_at = p.global_step;
    result.has_validation = true;
    result.last_validation = v;
    s.log.write({{"type", "validation"},
                 {"epoch", p.epoch + 1},
                 {"step", p.global_step},
                 {"when", when},
                 {"loss", v.loss},
                 {"perplexity", v.perplexity},
                 {"bleu4", v.bleu4},
                 {"cider", v.cider},
                 {"images", v.images},
                 {"elapsed_s", detail::seconds_since(t0)}});
    line.print(fmt::format(
        "validation {} (step {}): loss {:.4f} perplexity {:.2f} BLEU-4 {:.4f} CIDEr {:.4f}{}", when,
        p.global_step, v.loss, v.perplexity, v.bleu4, v.cider,
        !p.best || v.cider > p.best->cider ? ", best so far" : ""));
    return v;
  };
  // best.imcap is the state of the highest validation CIDEr seen, wherever it was seen; the
  // checkpoint resumes at the batch after it. Returns whether it was replaced.
  auto keep_if_best = [&](const Validation& v, std::size_t next_epoch, std::size_t next_step) {
    if (p.best && !(v.cider > p.best->cider)) return false;
    p.best = v;
    s.save("best.imcap", next_epoch, next_step);
    return true;
  };
  const auto out_of_time = [&] {
    return o.max_seconds > 0 && detail::seconds_since(t0) >= o.max_seconds;
  };

  for (; p.epoch < static_cast<std::size_t>(o.epochs) && !stop; ++p.epoch, p.step_in_epoch = 0) {
    s.loader.start_epoch(p.epoch);
    const std::size_t in_epoch = s.loader.batches_per_epoch();
    if (p.step_in_epoch > 0) s.loader.skip(p.step_in_epoch);
    while (auto batch = s.loader.next()) {
      // The end-of-budget cut: by steps and epochs a function of the progress (a resumed run
      // cuts where the uninterrupted one did), by time from the clock of this call. Ranks learn
      // each other's clocks from the step's all-reduce, so they cut one step after it calls.
      const bool time_share = s.schedule.anneal_time(detail::seconds_since(t0));
      if (s.group == nullptr) time_due = time_due || time_share;
      if (!annealed && (time_due || s.schedule.anneal_due(p, in_epoch))) {
        annealed = true;
        detail::set_lr(s.step.optimizer(), s.schedule.rate(p, annealed));
        line.print(fmt::format(
            "step {}: learning rate {:g} -> {:g} for the rest of the run ({:g} % "
            "of its budget)",
            p.global_step + 1, p.lr, s.schedule.rate(p, annealed), 100.0 * o.lr_anneal_share));
      }
      const detail::StepOutcome r = s.step.run(*batch, out_of_time() || stop_requested(),
                                               time_share, p, s.path("last.imcap"));
      ++p.step_in_epoch;
      ++p.global_step;
      result.losses.push_back(r.loss);
      result.last_loss = r.loss;
      result.last_reward = r.reward;
      result.captions += r.captions;
      reward_seconds += r.reward_seconds;
      if (auto entry = line.after_step(p, r, s.schedule.rate(p, annealed)); !entry.is_null())
        s.log.write(entry);
      if (s.group != nullptr) time_due = time_due || r.anneal;
      const bool time_or_signal = s.group != nullptr ? r.stop : out_of_time() || stop_requested();
      if (time_or_signal || (o.max_steps > 0 && p.global_step >= o.max_steps)) {
        stop = true;
        break;
      }
      if (s.val != nullptr && o.val_every_steps > 0 && p.global_step % o.val_every_steps == 0 &&
          p.step_in_epoch < per_epoch)
        keep_if_best(validate_now(fmt::format("in epoch {}", p.epoch + 1)), p.epoch,
                     p.step_in_epoch);
    }
    line.end_epoch();
    if (stop && p.step_in_epoch < per_epoch) {
      // Mid-epoch: last.imcap first (a second signal during the validation loses nothing), then
      // the final state is validated, so that best.imcap is never older than the model.
      s.save("last.imcap", p.epoch, p.step_in_epoch);
      if (s.val != nullptr && o.validate_at_stop && validated_at != p.global_step) {
        if (stop_requested.by_signal())
          line.print(
              "validating the final state (a second signal stops at once; last.imcap "
              "is saved)");
        if (keep_if_best(validate_now("at the stop"), p.epoch, p.step_in_epoch))
          s.save("last.imcap", p.epoch, p.step_in_epoch);  // it records the best
      }
      break;  // resume continues this epoch
    }
    // End of an epoch: validate, adjust the learning rate, checkpoint.
    ++result.epochs_completed;
    if (s.val != nullptr) {
      const Validation v = validated_at == p.global_step
                               ? result.last_validation
                               : validate_now(fmt::format("after epoch {}", p.epoch + 1));
      if (s.schedule.after_validation(p, v.loss))
        detail::set_lr(s.step.optimizer(), s.schedule.rate(p, annealed));
      keep_if_best(v, p.epoch + 1, 0);
    }
    if (s.schedule.after_epoch(p, p.epoch))
      detail::set_lr(s.step.optimizer(), s.schedule.rate(p, annealed));
    p.step_in_epoch = 0;
    s.save("last.imcap", p.epoch + 1, 0);
    if (stop) break;
  }
  if (stop) {
    result.stopped_early = true;
    line.print(fmt::format("stopped after step {}; saved {}", p.global_step, s.path("last.imcap")));
  }
  s.stop_requested = false;
  // The other ranks wait for rank 0's checkpoint: if writing it fails, they fail too.
  if (s.group != nullptr) s.group->barrier();
  result.steps = p.global_step;
  result.best_validation = p.best.value_or(Validation{});
  result.seconds = detail::seconds_since(t0);
  result.reward_share = reward_seconds / std::max(1e-9, result.seconds - result.validation_seconds);
  return result;
}

}  // namespace imcap
