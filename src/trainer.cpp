#include "imcap/trainer.hpp"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/fused_adam.hpp"
#include "detail/io.hpp"
#include "detail/memory.hpp"
#include "imcap/distributed.hpp"
#include "imcap/error.hpp"
#include "imcap/metrics.hpp"

namespace imcap {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Spreads the ranks' per-step dropout seeds apart (rank 0 keeps the one-process seeds).
constexpr std::uint64_t kRankSeedStride = 0x9e3779b97f4a7c15ull;

volatile std::sig_atomic_t g_stop_requested = 0;

// The first SIGINT or SIGTERM asks for a clean stop (save, validate); the handler then steps
// aside, so that a second one ends the process at once (signal() is async-signal-safe).
extern "C" void imcap_on_stop_signal(int sig) {
  g_stop_requested = 1;
  std::signal(sig, SIG_DFL);
}

// A run killed while writing the log can leave half a line; the resumed run's lines must not
// be glued to it.
void drop_partial_last_line(const std::string& path) {
  if (!detail::is_regular_file(path)) return;
  const std::string text = detail::read_file(path);
  if (text.empty() || text.back() == '\n') return;
  const auto keep = text.find_last_of('\n');
  const off_t size = keep == std::string::npos ? 0 : static_cast<off_t>(keep + 1);
  if (::truncate(path.c_str(), size) != 0)
    throw IoError(fmt::format("{}: cannot cut the partial last line: {}", path,
                              detail::errno_message(errno)));
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  const auto total = static_cast<long>(s + 0.5);
  return total >= 3600
             ? fmt::format("{}:{:02d}:{:02d}", total / 3600, (total / 60) % 60, total % 60)
             : fmt::format("{:02d}:{:02d}", total / 60, total % 60);
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) {
    if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&group.options())) adam->lr(lr);
    if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) sgd->lr(lr);
  }
}

json validation_json(const Validation& v) {
  return {{"loss", v.loss},
          {"perplexity", v.perplexity},
          {"bleu4", v.bleu4},
          {"cider", v.cider},
          {"images", v.images}};
}

// The training state of a checkpoint (its `training` metadata), read with every key checked:
// a hostile or damaged value is a FormatError naming the file and the key, never a raw JSON
// exception or a run that silently trains nothing.
class TrainingStateReader {
 public:
  TrainingStateReader(const std::string& text, std::string file) : file_(std::move(file)) {
    try {
      root_ = json::parse(text);
    } catch (const json::exception& e) {
      // Without nlohmann's "[json.exception.parse_error.101] " prefix.
      const std::string what = e.what();
      const auto end = what.rfind("] ", what.find(' '));
      throw FormatError(fmt::format("{}: training: not valid JSON: {}", file_,
                                    end == std::string::npos ? what : what.substr(end + 2)));
    }
    if (!root_.is_object())
      throw FormatError(
          fmt::format("{}: training: expected a JSON object, got {}", file_, shown(root_)));
  }

  // Present and not null.
  bool has(const std::string& key) const {
    const auto it = root_.find(key);
    return it != root_.end() && !it->is_null();
  }
  TrainingStateReader child(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_object()) fail(key, "an object", v);
    return TrainingStateReader(v, file_, path_ + key + ".");
  }
  std::string text(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_string()) fail(key, "a string", v);
    return v.get<std::string>();
  }
  // An integer from `min` to `max`; `expected`, when given, says what is allowed in the
  // message.
  std::uint64_t count(const std::string& key, std::uint64_t min, std::uint64_t max,
                      const std::string& expected = {}) const {
    const json& v = at(key);
    const bool in_range =
        v.is_number_unsigned() && v.get<std::uint64_t>() >= min && v.get<std::uint64_t>() <= max;
    if (!in_range)
      fail(key,
           !expected.empty() ? expected
           : min == max      ? fmt::format("{}", min)
                             : fmt::format("an integer from {} to {}", min, max),
           v);
    return v.get<std::uint64_t>();
  }
  // A finite number, at least `min` (or above it when `strict`).
  double number(const std::string& key, double min, bool strict) const {
    const json& v = at(key);
    const bool ok = v.is_number() && std::isfinite(v.get<double>()) &&
                    (strict ? v.get<double>() > min : v.get<double>() >= min);
    if (!ok) fail(key, fmt::format("a finite number {} {}", strict ? ">" : ">=", min), v);
    return v.get<double>();
  }
  [[noreturn]] void fail(const std::string& key, const std::string& expected,
                         const json& got) const {
    throw FormatError(fmt::format("{}: training.{}{}: expected {}, got {}", file_, path_, key,
                                  expected, shown(got)));
  }

 private:
  TrainingStateReader(const json& root, std::string file, std::string path)
      : file_(std::move(file)), path_(std::move(path)), root_(root) {}

  const json& at(const std::string& key) const {
    const auto it = root_.find(key);
    if (it == root_.end())
      throw FormatError(fmt::format("{}: training: missing key '{}{}'", file_, path_, key));
    return *it;
  }
  static std::string shown(const json& v) {
    constexpr std::size_t kMaxShown = 40;
    std::string text = v.dump();
    if (text.size() > kMaxShown) text = text.substr(0, kMaxShown) + "...";
    return text;
  }

  std::string file_;
  std::string path_;  // "best." inside the best validation's object
  json root_;
};

Validation validation_from_json(const TrainingStateReader& j) {
  Validation v;
  v.loss = j.number("loss", 0.0, /*strict=*/false);
  v.perplexity = j.number("perplexity", 0.0, /*strict=*/false);
  v.bleu4 = j.number("bleu4", 0.0, /*strict=*/false);
  v.cider = j.number("cider", 0.0, /*strict=*/false);
  v.images = j.count("images", 0, std::numeric_limits<std::size_t>::max());
  return v;
}

// The encoder's output for a batch: the CNN and head on images [U, 3, H, W], or the head
// alone on precomputed features [U, C] (a dataset with CocoDatasetOptions::features).
torch::Tensor encode(CaptionModel& model, const torch::Tensor& images) {
  if (images.dim() == 2) return model.encoder()->embed_features(images);
  return model.encoder()->forward(images);
}

}  // namespace

LrSchedule parse_lr_schedule(const std::string& name) {
  if (name == "none") return LrSchedule::none;
  if (name == "step") return LrSchedule::step;
  if (name == "plateau") return LrSchedule::plateau;
  throw InvalidArgument(
      fmt::format("learning-rate schedule '{}' is not one of: none, step, plateau", name));
}

void Trainer::request_stop() { g_stop_requested = 1; }

void Trainer::install_signal_handlers() {
  std::signal(SIGINT, imcap_on_stop_signal);
  std::signal(SIGTERM, imcap_on_stop_signal);
}

struct Trainer::Impl {
  CaptionModel& model;
  const CocoDataset& train;
  const CocoDataset* val;
  TrainerOptions options;
  ProcessGroup* group;  // null: one process
  int rank = 0;
  int world = 1;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  DataLoader loader;
  bool channels_last = false;  // images go to the CNN in channels_last (see the constructor)
  // Progress, saved in checkpoints.
  std::size_t epoch = 0;          // current epoch (0-based)
  std::size_t step_in_epoch = 0;  // batches of `epoch` already done
  std::size_t global_step = 0;
  double lr = 0.0;
  bool has_best = false;
  Validation best;
  double best_val_loss = INFINITY;
  int bad_epochs = 0;
  std::ofstream log;

  Impl(CaptionModel& m, const CocoDataset& t, const CocoDataset* v, TrainerOptions o)
      : model(m),
        train(t),
        val(v),
        options(std::move(o)),
        group(options.process_group.get()),
        rank(group != nullptr ? group->rank() : 0),
        world(group != nullptr ? group->world_size() : 1),
        loader(t, loader_options(options, m.device())) {}

  // Rank 0 writes the log and the checkpoints, and reports progress.
  bool writer() const { return rank == 0; }

  static DataLoaderOptions loader_options(const TrainerOptions& o, const torch::Device& device) {
    DataLoaderOptions d;
    // Page-locked batches: the copies to the GPU below run without blocking the host.
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

  void write_log(const json& line) {
    if (!writer()) return;
    log << line.dump() << '\n';
    log.flush();
    if (!log) throw IoError(fmt::format("{}: cannot write the log", path("log.jsonl")));
  }

  // The state to resume from: the next batch to train is batch `next_step` of `next_epoch`.
  std::string training_state_json(std::size_t next_epoch, std::size_t next_step) const {
    json j{{"epoch", next_epoch},
           {"step_in_epoch", next_step},
           {"global_step", global_step},
           {"lr", lr},
           {"optimizer", options.optimizer},
           {"seed", options.seed},
           {"batch_size", options.batch_size},
           {"batching", batch_mode_name(options.batching)},
           {"best_val_loss", std::isfinite(best_val_loss) ? json(best_val_loss) : json(nullptr)},
           {"bad_epochs", bad_epochs}};
    if (has_best) j["best"] = validation_json(best);
    return j.dump();
  }

  std::string optimizer_state() const {
    torch::serialize::OutputArchive archive;
    optimizer->save(archive);
    std::ostringstream bytes;
    archive.save_to(bytes);
    return bytes.str();
  }

  TrainingState training_state(std::size_t next_epoch, std::size_t next_step) const {
    TrainingState s;
    s.json = training_state_json(next_epoch, next_step);
    const std::string b = optimizer_state();
    s.tensors.insert("optimizer",
                     torch::from_blob(const_cast<char*>(b.data()),
                                      {static_cast<std::int64_t>(b.size())}, torch::kUInt8)
                         .clone());
    return s;
  }

  void restore(const std::string& file) {
    TrainingState s;
    const CaptionModel saved = CaptionModel::load(file, model.device(), &s);
    if (model_config_to_json(saved.config()) != model_config_to_json(model.config()))
      throw InvalidArgument(
          fmt::format("{}: its architecture differs from the model being trained", file));
    if (saved.vocab() != model.vocab())
      throw InvalidArgument(
          fmt::format("{}: its vocabulary differs from the model being trained", file));
    if (s.json.empty() || !s.tensors.contains("optimizer"))
      throw FormatError(fmt::format("{}: holds no training state to resume from", file));
    const auto bytes = s.tensors.at("optimizer").contiguous();
    if (bytes.scalar_type() != torch::kUInt8 || bytes.dim() != 1)
      throw FormatError(
          fmt::format("{}: tensor 'training.optimizer': expected the optimizer's bytes (uint8, "
                      "one dimension), got {} of shape [{}]",
                      file, c10::toString(bytes.scalar_type()), fmt::join(bytes.sizes(), ", ")));
    apply_state(s.json,
                std::string(reinterpret_cast<const char*>(bytes.data_ptr<std::uint8_t>()),
                            static_cast<std::size_t>(bytes.numel())),
                file);
    {
      torch::NoGradGuard no_grad;
      auto copy = [](torch::nn::Module& to, const torch::nn::Module& from) {
        auto src_p = from.named_parameters();
        for (auto& p : to.named_parameters()) p.value().copy_(src_p[p.key()]);
        auto src_b = from.named_buffers();
        for (auto& b : to.named_buffers()) b.value().copy_(src_b[b.key()]);
      };
      copy(*model.encoder(), *saved.encoder());
      copy(*model.decoder(), *saved.decoder());
    }
  }

  // Progress and optimizer state of a checkpoint (read by rank 0, sent to the other ranks).
  // Every value is checked, for its type and against the run (see TrainingStateReader).
  void apply_state(const std::string& state_json, const std::string& optimizer_bytes,
                   const std::string& file) {
    const TrainingStateReader j(state_json, file);
    constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
    const std::string saved_optimizer = j.text("optimizer");
    const std::uint64_t saved_batch_size = j.count("batch_size", 1, kMax, "a positive integer");
    const std::uint64_t saved_seed = j.count("seed", 0, kMax, "a non-negative integer");
    const std::string saved_batching = j.text("batching");
    if (saved_optimizer != options.optimizer || saved_batch_size != options.batch_size ||
        saved_seed != options.seed || saved_batching != batch_mode_name(options.batching))
      throw InvalidArgument(
          fmt::format("{}: was trained with optimizer {}, batch size {}, batching {} and seed {}: "
                      "resume with the same",
                      file, saved_optimizer, saved_batch_size, saved_batching, saved_seed));
    // The next batch to train: batch step_in_epoch of epoch `epoch` (0-based), after
    // global_step batches in all.
    const auto epochs = static_cast<std::size_t>(options.epochs);
    const auto next_epoch =
        j.count("epoch", 0, static_cast<std::uint64_t>(std::numeric_limits<int>::max()),
                fmt::format("an integer from 0 to {} (this run's epochs)", epochs));
    if (next_epoch > epochs)
      throw InvalidArgument(fmt::format(
          "{}: training.epoch: the checkpoint has done {} epochs, more than this run's {}: resume "
          "with at least {} epochs",
          file, next_epoch, epochs, next_epoch));
    const std::size_t batches = next_epoch < epochs ? loader.batches_in_epoch(next_epoch) : 0;
    const auto next_step =
        batches == 0
            ? j.count("step_in_epoch", 0, 0,
                      "0 (the checkpoint is at the end of the run's last epoch)")
            : j.count("step_in_epoch", 0, batches - 1,
                      fmt::format("an integer from 0 to {} (epoch {} has {} batches of this "
                                  "training set)",
                                  batches - 1, next_epoch + 1, batches));
    std::uint64_t steps_before = next_step;
    for (std::size_t e = 0; e < next_epoch; ++e) steps_before += loader.batches_in_epoch(e);
    const auto steps = j.count(
        "global_step", steps_before, steps_before,
        fmt::format("{} (the batches of the {} epochs before, plus step_in_epoch {}, of this "
                    "training set)",
                    steps_before, next_epoch, next_step));
    const double saved_lr = j.number("lr", 0.0, /*strict=*/true);
    const auto saved_bad_epochs =
        j.has("bad_epochs")
            ? j.count("bad_epochs", 0, next_epoch,
                      fmt::format("an integer from 0 to {} (the epochs done)", next_epoch))
            : 0;
    const double saved_best_val_loss =
        j.has("best_val_loss") ? j.number("best_val_loss", 0.0, /*strict=*/false) : INFINITY;
    const bool saved_has_best = j.has("best");
    const Validation saved_best = saved_has_best ? validation_from_json(j.child("best")) : best;
    load_optimizer_state(optimizer_bytes, file, steps);
    epoch = next_epoch;
    step_in_epoch = next_step;
    global_step = steps;
    lr = saved_lr;
    bad_epochs = static_cast<int>(saved_bad_epochs);
    best_val_loss = saved_best_val_loss;
    has_best = saved_has_best;
    best = saved_best;
    set_lr(*optimizer, lr);
  }

  // The optimizer's state from a checkpoint, checked against the parameters it updates.
  void load_optimizer_state(const std::string& bytes, const std::string& file, std::size_t steps) {
    const std::string key = "training.optimizer";
    try {
      std::istringstream in(bytes);
      torch::serialize::InputArchive archive;
      archive.load_from(in);
      optimizer->load(archive);
    } catch (const c10::Error& e) {
      throw FormatError(fmt::format("{}: {}: not a state of the {} optimizer for this model: {}",
                                    file, key, options.optimizer, e.what_without_backtrace()));
    }
    const auto& state = optimizer->state();
    for (const auto& p : params) {
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
    for (auto* m : {static_cast<torch::nn::Module*>(model.encoder().get()),
                    static_cast<torch::nn::Module*>(model.decoder().get())}) {
      for (auto& p : m->parameters()) state.push_back(p);
      for (auto& b : m->buffers()) state.push_back(b);
    }
    group->broadcast(state, 0);
    if (!options.resume) return;
    std::string state_json, optimizer_bytes;
    if (writer()) {
      state_json = training_state_json(epoch, step_in_epoch);
      optimizer_bytes = optimizer_state();
    }
    state_json = group->broadcast_bytes(state_json, 0);
    optimizer_bytes = group->broadcast_bytes(optimizer_bytes, 0);
    if (!writer()) apply_state(state_json, optimizer_bytes, last);
  }

  void save_checkpoint(const char* name, std::size_t next_epoch, std::size_t next_step) {
    if (!writer()) return;
    const TrainingState state = training_state(next_epoch, next_step);
    model.save(path(name), &state);
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
  if (options.optimizer != "adam" && options.optimizer != "sgd")
    throw InvalidArgument(
        fmt::format("trainer: optimizer '{}' is not one of: adam, sgd", options.optimizer));
  if (train.vocabulary() != model.vocab())
    throw InvalidArgument("trainer: the training set's vocabulary differs from the model's");
  if (val != nullptr && val->vocabulary() != model.vocab())
    throw InvalidArgument("trainer: the validation set's vocabulary differs from the model's");
  for (const CocoDataset* d : {&train, val}) {
    if (d == nullptr || !d->has_features() || d->image_ids().empty()) continue;
    std::mt19937_64 rng(0);
    const auto row = d->image(d->image_ids().front(), rng);
    if (row.size(0) != model.encoder()->feature_dim())
      throw InvalidArgument(fmt::format(
          "trainer: the precomputed features have {} values per image, the model's "
          "CNN ({}) gives {}",
          row.size(0), to_string(model.config().encoder.arch), model.encoder()->feature_dim()));
    if (model.encoder()->backbone->trainable_stages() > 0)
      throw InvalidArgument(
          "trainer: training on precomputed features needs a frozen CNN (trainable stages 0)");
  }
  impl_ = std::make_unique<Impl>(model, train, val, std::move(options));
  auto& o = impl_->options;
  // oneDNN trains the CNN's convolutions on the CPU about 1.4x faster in channels_last (NHWC)
  // than in NCHW at training batch sizes (docs/performance.md): the trainable convolution
  // weights are kept in that layout (their gradients and Adam's moments follow), and the images
  // are given in it. Saved files are row-major as always.
  if (model.device().is_cpu() && at::hasMKLDNN() && !train.has_features()) {
    torch::NoGradGuard no_grad;
    for (auto& m : model.encoder()->backbone->modules(/*include_self=*/false))
      if (auto* conv = m->as<torch::nn::Conv2d>();
          conv != nullptr && conv->weight.requires_grad()) {
        conv->weight.set_data(conv->weight.contiguous(at::MemoryFormat::ChannelsLast));
        impl_->channels_last = true;
      }
  }
  for (auto& p : model.encoder()->parameters())
    if (p.requires_grad()) impl_->params.push_back(p);
  for (auto& p : model.decoder()->parameters())
    if (p.requires_grad()) impl_->params.push_back(p);
  if (o.optimizer == "adam")
    impl_->optimizer = std::make_unique<detail::FusedAdam>(
        impl_->params, torch::optim::AdamOptions(o.lr).weight_decay(o.weight_decay));
  else
    impl_->optimizer = std::make_unique<torch::optim::SGD>(
        impl_->params,
        torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
  impl_->lr = o.lr;
  const auto last = impl_->path("last.imcap");
  if (impl_->writer()) {
    detail::create_directories(o.out_dir);
    for (const char* name : {"last.imcap", "best.imcap"})
      detail::remove_stale_temp_files(impl_->path(name));
    if (o.resume) {
      if (!detail::path_exists(last))
        throw IoError(fmt::format("{}: no checkpoint to resume from", last));
      impl_->restore(last);
      drop_partial_last_line(impl_->path("log.jsonl"));
    }
    impl_->log.open(impl_->path("log.jsonl"), o.resume ? std::ios::app : std::ios::trunc);
    if (!impl_->log)
      throw IoError(fmt::format("{}: cannot open the log for writing", impl_->path("log.jsonl")));
  }
  if (impl_->group != nullptr) impl_->synchronise_start(last);
}

Trainer::~Trainer() = default;

Validation Trainer::validate() {
  Impl& s = *impl_;
  if (s.val == nullptr) throw InvalidArgument("trainer: no validation set");
  const CocoDataset& val = *s.val;
  torch::NoGradGuard no_grad;
  s.model.train(false);
  const auto device = s.model.device();
  const auto& ids = val.image_ids();
  const std::size_t n =
      s.options.val_max_images == 0 ? ids.size() : std::min(ids.size(), s.options.val_max_images);
  const Captioner captioner(std::shared_ptr<CaptionModel>(&s.model, [](CaptionModel*) {}),
                            s.options.val_search);
  double loss_sum = 0.0, tokens = 0.0;
  std::map<std::int64_t, std::vector<std::string>> refs;
  std::map<std::int64_t, std::string> candidates;
  std::mt19937_64 rng(s.options.seed);
  constexpr std::size_t kChunk = 32;
  const auto pad = s.model.vocab().pad_id().value_or(s.model.vocab().end_id());
  // With several processes each captions every world-th chunk; the captions' ids are summed
  // into one table that every rank decodes, so all ranks agree on the scores (and thus on the
  // learning-rate schedule and on best.imcap).
  std::map<std::int64_t, std::vector<std::int64_t>> found_ids;
  for (std::size_t start = 0; start < n; start += kChunk) {
    const std::size_t end = std::min(n, start + kChunk);
    if ((start / kChunk) % static_cast<std::size_t>(s.world) != static_cast<std::size_t>(s.rank)) {
      for (std::size_t i = start; i < end; ++i) refs[ids[i]] = val.references(ids[i]);
      continue;
    }
    std::vector<torch::Tensor> images;
    std::vector<const std::vector<std::int64_t>*> seqs;
    std::vector<std::int64_t> rows;
    for (std::size_t i = start; i < end; ++i) {
      images.push_back(val.image(ids[i], rng));
      for (const auto ci : val.captions_of_image(ids[i])) {
        seqs.push_back(&val.caption_ids(ci));
        rows.push_back(static_cast<std::int64_t>(i - start));
      }
      refs[ids[i]] = val.references(ids[i]);
    }
    const auto features = encode(s.model, torch::stack(images).to(device));
    Batch b;
    pad_captions(seqs, pad, b);
    const auto captions = b.captions.to(device);
    const auto lengths = b.lengths.to(device);
    const auto logits = s.model.decoder()->forward(
        features.index_select(0, torch::tensor(rows, torch::kInt64).to(device)), captions, lengths);
    const double count = static_cast<double>(b.lengths.sum().item<std::int64_t>());
    loss_sum += caption_loss(logits, captions, lengths).item<double>() * count;
    tokens += count;
    const auto found = captioner.caption_features(features, s.options.val_search);
    for (std::size_t i = start; i < end; ++i) {
      candidates[ids[i]] = found[i - start].text;
      found_ids[ids[i]] = found[i - start].ids;
    }
  }
  if (s.group != nullptr) {
    auto sums = torch::tensor({loss_sum, tokens}, torch::kFloat64);
    s.group->all_reduce(sums);
    loss_sum = sums[0].item<double>();
    tokens = sums[1].item<double>();
    std::int64_t longest = 0;
    for (const auto& [id, t] : found_ids) longest = std::max<std::int64_t>(longest, t.size());
    auto width = torch::tensor({longest}, torch::kInt64);
    s.group->all_reduce(width, ReduceOp::max);
    // Row i: the caption's length, then its ids (zeros on the ranks that did not caption i).
    auto table =
        torch::zeros({static_cast<std::int64_t>(n), width.item<std::int64_t>() + 1}, torch::kInt64);
    auto rows = table.accessor<std::int64_t, 2>();
    for (std::size_t i = 0; i < n; ++i) {
      const auto it = found_ids.find(ids[i]);
      if (it == found_ids.end()) continue;
      rows[i][0] = static_cast<std::int64_t>(it->second.size());
      for (std::size_t k = 0; k < it->second.size(); ++k) rows[i][k + 1] = it->second[k];
    }
    s.group->all_reduce(table);
    rows = table.accessor<std::int64_t, 2>();
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<std::int64_t> caption(static_cast<std::size_t>(rows[i][0]));
      for (std::size_t k = 0; k < caption.size(); ++k) caption[k] = rows[i][k + 1];
      std::string text;
      for (const auto& w : s.model.vocab().decode_tokens(caption))
        text += (text.empty() ? "" : " ") + w;
      candidates[ids[i]] = text;
    }
  }
  Validation v;
  v.images = n;
  v.loss = tokens > 0 ? loss_sum / tokens : 0.0;
  v.perplexity = std::exp(v.loss);
  if (!candidates.empty()) {
    const auto scores = evaluate_captions(refs, candidates);
    v.bleu4 = scores.corpus.bleu[3];
    v.cider = scores.corpus.cider;
  }
  return v;
}

TrainResult Trainer::fit() {
  Impl& s = *impl_;
  const auto& o = s.options;
  TrainResult result;
  const auto t0 = Clock::now();
  g_stop_requested = 0;
  const bool progress = o.progress && s.writer();
  const bool tty = progress && ::isatty(STDERR_FILENO) != 0;
  const auto device = s.model.device();
  const std::size_t per_epoch = s.loader.batches_per_epoch();
  const std::size_t total_steps = per_epoch * static_cast<std::size_t>(o.epochs);
  const std::size_t start_step = s.global_step;
  double window_captions = 0.0, ema_loss = 0.0;
  auto window_start = Clock::now();
  bool stop = false;
  // The step this call last validated at (validate_now sets it with result.last_validation).
  std::size_t validated_at = SIZE_MAX;
  auto validate_now = [&](const std::string& when) {
    if (tty) std::cerr << "\r\033[K";
    const auto started = Clock::now();
    const Validation v = validate();
    result.validation_seconds += seconds_since(started);
    // The captions/s of the progress line are those of training.
    window_captions = 0.0;
    window_start = Clock::now();
    validated_at = s.global_step;
    result.has_validation = true;
    result.last_validation = v;
    s.write_log({{"type", "validation"},
                 {"epoch", s.epoch + 1},
                 {"step", s.global_step},
                 {"when", when},
                 {"loss", v.loss},
                 {"perplexity", v.perplexity},
                 {"bleu4", v.bleu4},
                 {"cider", v.cider},
                 {"images", v.images},
                 {"elapsed_s", seconds_since(t0)}});
    if (progress)
      std::cerr << fmt::format(
          "validation {} (step {}): loss {:.4f} perplexity {:.2f} BLEU-4 {:.4f} CIDEr {:.4f}{}\n",
          when, s.global_step, v.loss, v.perplexity, v.bleu4, v.cider,
          !s.has_best || v.cider > s.best.cider ? ", best so far" : "");
    return v;
  };
  // best.imcap is the state of the highest validation CIDEr seen, wherever it was seen; the
  // checkpoint resumes at the batch after it. Returns whether it was replaced.
  auto keep_if_best = [&](const Validation& v, std::size_t next_epoch, std::size_t next_step) {
    if (s.has_best && !(v.cider > s.best.cider)) return false;
    s.has_best = true;
    s.best = v;
    s.save_checkpoint("best.imcap", next_epoch, next_step);
    return true;
  };

  for (; s.epoch < static_cast<std::size_t>(o.epochs) && !stop; ++s.epoch, s.step_in_epoch = 0) {
    s.loader.start_epoch(s.epoch);
    if (s.step_in_epoch > 0) s.loader.skip(s.step_in_epoch);
    while (auto batch = s.loader.next()) {
      s.model.train(true);
      // A per-step seed makes dropout reproducible across a resume without storing RNG state;
      // each rank draws its own masks.
      torch::manual_seed(o.seed * 1000003ull + s.global_step +
                         static_cast<std::uint64_t>(s.rank) * kRankSeedStride);
      // A rank's part of a batch is empty when the batch has fewer captions (or images) than
      // there are ranks; the rank then only takes part in the collectives.
      const bool has_data = batch->size() > 0;
      torch::Tensor loss;
      double loss_value = 0.0, rank_tokens = 0.0, all_tokens = 0.0;
      if (has_data) {
        auto images = batch->images.to(device, /*non_blocking=*/true);
        if (s.channels_last && images.dim() == 4)
          images = images.contiguous(at::MemoryFormat::ChannelsLast);
        const auto captions = batch->captions.to(device, /*non_blocking=*/true);
        const auto lengths = batch->lengths.to(device, /*non_blocking=*/true);
        const auto features =
            encode(s.model, images)
                .index_select(0, batch->image_index.to(device, /*non_blocking=*/true));
        loss = s.model.decoder()->loss(features, captions, lengths);
        loss_value = loss.item<double>();
        rank_tokens = static_cast<double>(batch->lengths.sum().item<std::int64_t>());
      }
      double step_captions = static_cast<double>(batch->size());
      bool stop_requested = false;
      if (s.group != nullptr) {
        // One small all-reduce: the batch's token-weighted loss and token count, its captions,
        // and whether any rank must stop (time limit, signal), so that all stop at one step.
        const bool want_stop =
            (o.max_seconds > 0 && seconds_since(t0) >= o.max_seconds) || g_stop_requested != 0;
        auto stats = torch::tensor(
            {loss_value * rank_tokens, rank_tokens, step_captions, want_stop ? 1.0 : 0.0},
            torch::kFloat64);
        s.group->all_reduce(stats);
        const auto st = stats.accessor<double, 1>();
        all_tokens = st[1];
        loss_value = st[0] / all_tokens;
        step_captions = st[2];
        stop_requested = st[3] > 0;
      }
      if (!std::isfinite(loss_value)) {
        const std::string last = s.path("last.imcap");
        throw Error(fmt::format(
            "training diverged: the loss is {} at step {} (epoch {}); {}. Try a lower --lr.",
            loss_value, s.global_step + 1, s.epoch + 1,
            detail::path_exists(last) ? fmt::format("the last checkpoint {} is kept", last)
                                      : std::string("no checkpoint was written")));
      }
      s.optimizer->zero_grad();
      if (s.group == nullptr) {
        loss.backward();
      } else {
        // caption_loss is a mean over this rank's tokens. Weighted by the rank's share of the
        // batch's tokens (times the world size), the ranks' averaged gradient is the gradient of
        // the whole batch's mean loss: the step one process would take on the whole batch.
        if (has_data) (loss * (rank_tokens * s.world / all_tokens)).backward();
        std::vector<torch::Tensor> grads;
        grads.reserve(s.params.size());
        for (auto& p : s.params) {
          if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
          grads.push_back(p.grad());
        }
        s.group->all_reduce_mean(grads, o.bucket_bytes);
      }
      if (o.clip_norm > 0) torch::nn::utils::clip_grad_norm_(s.params, o.clip_norm);
      s.optimizer->step();
      ++s.step_in_epoch;
      ++s.global_step;
      result.losses.push_back(loss_value);
      result.last_loss = loss_value;
      ema_loss = result.losses.size() == 1 ? loss_value : 0.95 * ema_loss + 0.05 * loss_value;
      window_captions += step_captions;
      result.captions += step_captions;
      const double elapsed = seconds_since(t0);
      const bool log_now = s.global_step % std::max<std::size_t>(1, o.log_interval) == 0;
      if (log_now || tty) {
        const double rate = window_captions / std::max(1e-9, seconds_since(window_start));
        const double steps_done = static_cast<double>(s.global_step - start_step);
        const double eta =
            elapsed / std::max(1.0, steps_done) * static_cast<double>(total_steps - s.global_step);
        // With a time budget that ends the run before its epochs, the budget is the progress.
        const bool by_time = o.max_seconds > 0 && eta > o.max_seconds - elapsed;
        const std::string where =
            by_time ? fmt::format("time {}/{} epoch {} step {}/{}", format_duration(elapsed),
                                  format_duration(o.max_seconds), s.epoch + 1, s.step_in_epoch,
                                  per_epoch)
                    : fmt::format("epoch {}/{} step {}/{}", s.epoch + 1, o.epochs, s.step_in_epoch,
                                  per_epoch);
        const std::string line =
            by_time ? fmt::format("{} loss {:.4f} {:.0f} captions/s left {}", where, ema_loss, rate,
                                  format_duration(std::max(0.0, o.max_seconds - elapsed)))
                    : fmt::format("{} loss {:.4f} {:.0f} captions/s elapsed {} ETA {}", where,
                                  ema_loss, rate, format_duration(elapsed), format_duration(eta));
        if (tty) std::cerr << '\r' << line << "\033[K" << std::flush;
        if (log_now) {
          if (!tty && progress) std::cerr << line << '\n';
          s.write_log({{"type", "step"},
                       {"epoch", s.epoch + 1},
                       {"step", s.global_step},
                       {"loss", loss_value},
                       {"lr", s.lr},
                       {"captions_per_s", rate},
                       {"elapsed_s", elapsed},
                       {"rss_mib", detail::to_mib(detail::current_rss_bytes())}});
          window_captions = 0.0;
          window_start = Clock::now();
        }
      }
      const bool time_or_signal =
          s.group != nullptr
              ? stop_requested
              : (o.max_seconds > 0 && elapsed >= o.max_seconds) || g_stop_requested != 0;
      if (time_or_signal || (o.max_steps > 0 && s.global_step >= o.max_steps)) {
        stop = true;
        break;
      }
      if (s.val != nullptr && o.val_every_steps > 0 && s.global_step % o.val_every_steps == 0 &&
          s.step_in_epoch < per_epoch)
        keep_if_best(validate_now(fmt::format("in epoch {}", s.epoch + 1)), s.epoch,
                     s.step_in_epoch);
    }
    if (tty) std::cerr << '\n';
    if (stop && s.step_in_epoch < per_epoch) {
      // Mid-epoch: last.imcap first (a second signal during the validation loses nothing), then
      // the final state is validated, so that best.imcap is never older than the model.
      s.save_checkpoint("last.imcap", s.epoch, s.step_in_epoch);
      if (s.val != nullptr && o.validate_at_stop && validated_at != s.global_step) {
        if (progress && g_stop_requested != 0)
          std::cerr << "validating the final state (a second signal stops at once; last.imcap "
                       "is saved)\n";
        if (keep_if_best(validate_now("at the stop"), s.epoch, s.step_in_epoch))
          s.save_checkpoint("last.imcap", s.epoch, s.step_in_epoch);  // it records the best
      }
      break;  // resume continues this epoch
    }
    // End of an epoch: validate, adjust the learning rate, checkpoint.
    ++result.epochs_completed;
    if (s.val != nullptr) {
      const Validation v = validated_at == s.global_step
                               ? result.last_validation
                               : validate_now(fmt::format("after epoch {}", s.epoch + 1));
      if (v.loss < s.best_val_loss) {
        s.best_val_loss = v.loss;
        s.bad_epochs = 0;
      } else if (++s.bad_epochs >= o.lr_patience && o.lr_schedule == LrSchedule::plateau) {
        s.lr *= o.lr_gamma;
        s.bad_epochs = 0;
        set_lr(*s.optimizer, s.lr);
      }
      keep_if_best(v, s.epoch + 1, 0);
    }
    if (o.lr_schedule == LrSchedule::step &&
        (s.epoch + 1) % static_cast<std::size_t>(std::max(1, o.lr_step_epochs)) == 0) {
      s.lr *= o.lr_gamma;
      set_lr(*s.optimizer, s.lr);
    }
    s.step_in_epoch = 0;
    s.save_checkpoint("last.imcap", s.epoch + 1, 0);
    if (stop) break;
  }
  if (stop) {
    result.stopped_early = true;
    if (progress)
      std::cerr << fmt::format("stopped after step {}; saved {}\n", s.global_step,
                               s.path("last.imcap"));
  }
  // The other ranks wait for rank 0's checkpoint: if writing it fails, they fail too.
  if (s.group != nullptr) s.group->barrier();
  result.steps = s.global_step;
  result.best_validation = s.best;
  result.seconds = seconds_since(t0);
  return result;
}

}  // namespace imcap
