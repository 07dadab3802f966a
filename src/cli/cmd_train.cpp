// imcap train: train a captioning model on a COCO-format folder.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "cli/launch.hpp"
#include "cli/train_defaults.hpp"
#include "detail/io.hpp"
#include "imcap/distributed.hpp"
#include "imcap/error.hpp"
#include "imcap/features.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"

namespace imcap::cli {

namespace {

constexpr int kMaxEpochs = 100000;  // the most --epochs takes

// The options bind to the library's own option structs, so that their defaults are the
// library's.
struct TrainArgs {
  std::string annotations, images, val_annotations, val_images, out, features, val_features;
  std::string weights, device = "cpu", trainable = "auto", init_from, split, val_split;
  std::size_t clip_tokens = CocoDatasetOptions{}.clip_caption_tokens;
  ModelConfig model;
  TrainerOptions trainer;
  VocabularyOptions vocab;
  double flip = TransformOptions{}.flip_probability;
  int cache_mib = static_cast<int>(CocoDatasetOptions{}.cache_bytes >> 20);
  double dist_timeout = DistributedOptions{}.timeout_seconds;
  // epochs 0: three epochs, or as many as fit in --max-seconds when that is given.
  // resize 0: the whole image from scratch, 256/224 of image_size with --weights.
  int resize = 0, epochs = 0, threads = 0, blas_threads = -1, nproc = 0;
  bool lr_given = false;  // SCST's learning rate is its own unless --lr is given
  // The attention decoder has its own defaults for the sizes and dropout unless they are given.
  bool embed_given = false, hidden_given = false, dropout_given = false;
  std::vector<std::string> show_tell_only;  // Show and Tell options given (refused with attention)
  std::vector<std::string> attention_only;  // attention options given (refused with Show and Tell)
  bool resume = false, skip_missing = false;
};

int parse_trainable(const std::string& s, bool pretrained) {
  if (s == "auto") return pretrained ? 0 : kResNetStages;  // the seed freezes a pretrained CNN
  if (s == "all") return kResNetStages;
  if (s == "none") return 0;
  try {
    std::size_t used = 0;
    const int n = std::stoi(s, &used);
    if (used == s.size() && n >= 0 && n <= kResNetStages) return n;
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("--trainable-stages '{}': expected auto, none, all or 0 to {}", s,
                               kResNetStages));
}

// `--nproc N`: the same command line, less --nproc, in N local workers.
void launch_workers(const TrainArgs& a) {
  if (distributed_options_from_env())
    throw UsageError(
        "--nproc starts its own workers: it does not go with a launcher's environment "
        "(WORLD_SIZE is set)");
  if (!has_distributed_support())
    throw Error(
        "this build has no distributed support (LibTorch's c10d with Gloo was not found when "
        "imcap was configured; see docs/distributed.md)");
  const auto cmdline = own_command_line();
  std::vector<std::string> args;
  bool has_threads = false;
  for (std::size_t i = 1; i < cmdline.size(); ++i) {
    const auto& arg = cmdline[i];
    if (arg == "--nproc") {
      ++i;
      continue;
    }
    if (arg.rfind("--nproc=", 0) == 0) continue;
    has_threads = has_threads || arg == "--threads" || arg.rfind("--threads=", 0) == 0;
    args.push_back(arg);
  }
  // The workers share this machine's cores rather than each taking them all.
  if (!has_threads) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    args.push_back("--threads");
    args.push_back(std::to_string(std::max(1, cores / a.nproc)));
  }
  run_local_workers(a.nproc, args);
}

// Torch threads for a worker of a distributed job: --threads, else OMP_NUM_THREADS (torchrun
// sets it to 1 for several workers per machine), else the cores shared by the local workers.
int worker_threads(int requested) {
  if (requested > 0) return requested;
  if (const char* omp = std::getenv("OMP_NUM_THREADS"); omp != nullptr && std::atoi(omp) > 0)
    return std::atoi(omp);
  int local = 1;
  if (const char* n = std::getenv("LOCAL_WORLD_SIZE"); n != nullptr && std::atoi(n) > 0)
    local = std::atoi(n);
  return std::max(1, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) / local);
}

// Rank 0's last.imcap on every rank (the other machines need not see OUT): rank 0 reads it and
// sends its bytes; the others load them from a private temporary file.
CaptionModel load_for_resume(const std::string& last, const torch::Device& device,
                             ProcessGroup* group) {
  if (group == nullptr || group->world_size() == 1) return CaptionModel::load(last, device);
  const std::string bytes =
      group->broadcast_bytes(group->rank() == 0 ? detail::read_file(last) : std::string());
  if (group->rank() == 0) return CaptionModel::load(last, device);
  const char* base = std::getenv("TMPDIR");
  std::string tmp =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/imcap-resume-XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) throw IoError(tmp + ": cannot create a temporary file");
  ::close(fd);
  try {
    detail::write_file_atomic(tmp, bytes);
    auto model = CaptionModel::load(tmp, device);
    ::unlink(tmp.c_str());
    return model;
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

void run_train(const TrainArgs& a) {
  if (a.nproc > 0) return launch_workers(a);
  const auto dist = distributed_options_from_env();
  set_threads(dist ? worker_threads(a.threads) : a.threads, a.blas_threads);
  if (a.images.empty() && a.features.empty())
    throw UsageError("--images or --features is required");
  if (!a.val_annotations.empty() && a.val_images.empty() && a.val_features.empty())
    throw UsageError("--val-annotations needs --val-images or --val-features");
  if (a.val_annotations.empty() && !(a.val_images.empty() && a.val_features.empty()))
    throw UsageError("--val-images and --val-features need --val-annotations");
  torch::Device device = parse_device(a.device);
  std::shared_ptr<ProcessGroup> group;
  if (dist) {
    DistributedOptions d = *dist;
    d.timeout_seconds = a.dist_timeout;
    // One GPU per local worker, as torchrun's LOCAL_RANK means.
    if (device.is_cuda() && !device.has_index())
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(d.local_rank));
    group = std::make_shared<ProcessGroup>(d, device);
  }
  const bool chatty = group == nullptr || group->rank() == 0;
  const std::string last = detail::join_path(a.out, "last.imcap");
  torch::manual_seed(a.trainer.seed);
  auto train_annotations = load_annotations(a.annotations, a.split, "--split", true);
  std::optional<CocoAnnotations> val_annotations;
  if (!a.val_annotations.empty())
    val_annotations = load_annotations(a.val_annotations, a.val_split, "--val-split", true);
  else if (!a.val_split.empty())
    throw UsageError("--val-split needs --val-annotations");
  std::unique_ptr<CaptionModel> model;
  if (a.trainer.objective == Objective::kScst && a.init_from.empty() && !a.resume)
    throw UsageError(
        "--objective scst fine-tunes a trained model: give --init-from FILE (a cross-entropy "
        "run's best.imcap), or --resume");
  if (a.resume) {
    model = std::make_unique<CaptionModel>(load_for_resume(last, device, group.get()));
  } else if (!a.init_from.empty()) {
    // Every rank reads the file (it must be on every machine).
    model = std::make_unique<CaptionModel>(CaptionModel::load(a.init_from, device));
  } else {
    ModelConfig config = a.model;
    if (config.decoder_kind != DecoderKind::kAttention && !a.attention_only.empty())
      throw UsageError(
          fmt::format("{} applies to --decoder attention only", a.attention_only.front()));
    if (config.decoder_kind == DecoderKind::kAttention) {
      if (!a.show_tell_only.empty())
        throw UsageError(
            fmt::format("{} applies to --decoder show-tell only", a.show_tell_only.front()));
      if (a.embed_given) config.attention.embed_size = config.encoder.embed_size;
      if (a.hidden_given) config.attention.hidden_size = config.decoder.hidden_size;
      if (a.dropout_given) config.attention.dropout = config.decoder.dropout;
    }
    const bool pretrained = !a.weights.empty() || !a.features.empty();
    // Precomputed features come from a frozen CNN: "auto" freezes it.
    config.encoder.trainable_stages = parse_trainable(a.trainable, pretrained);
    config.image_resize =
        a.resize > 0 ? a.resize : train_defaults::image_resize(config.image_crop, pretrained);
    if (config.image_resize < config.image_crop)
      throw UsageError(
          fmt::format("--image-resize {} is smaller than --image-size {}: the crop must fit",
                      config.image_resize, config.image_crop));
    model = std::make_unique<CaptionModel>(config, Vocabulary::build(train_annotations, a.vocab));
    if (!a.weights.empty()) {
      LoadOptions lo;
      lo.ignore = {"fc\\..*"};
      load_state_dict(*model->encoder()->backbone, load_weights(a.weights), lo);
    }
    model->to(device);
  }
  const auto& cfg = model->config();
  TransformOptions tf = model->eval_transform().options();
  tf.train = true;
  tf.flip_probability = a.flip;
  const ImageTransform train_tf(tf);
  // A cache must suit the model: pooled vectors for Show and Tell, grids of as many positions
  // as the model's encoder gives for attention.
  auto check_cache = [&](const char* flag, const std::string& path, const FeatureSet& set) {
    const bool attention = model->decoder_kind() == DecoderKind::kAttention;
    if (set.spatial() != attention)
      throw InvalidArgument(fmt::format(
          "{} {}: {} features, but the model has a '{}' decoder: it needs {}", flag, path,
          set.spatial() ? "spatial (grid)" : "pooled", to_string(model->decoder_kind()),
          attention ? "grids (imcap features --spatial)" : "pooled features (imcap features)"));
    if (attention) {
      std::int64_t side = cfg.grid;
      if (side == 0) {
        side = cfg.image_crop;
        for (int i = 0; i < 5; ++i) side = (side - 1) / 2 + 1;  // ResNet's five stride-2 steps
      }
      const std::int64_t cells = set.features.size(1);
      if (cells != side * side)
        throw InvalidArgument(fmt::format(
            "{} {}: grids of {} positions, but the model's encoder gives {}x{} = {} (--grid {}, "
            "--image-size {}): compute the features with the same --grid and --image-size",
            flag, path, cells, side, side, side * side, cfg.grid, cfg.image_crop));
    }
  };
  // With --features the CNN does not run: the dataset hands out the cached features.
  auto dataset_options = [&](const std::string& features, const char* flag) {
    CocoDatasetOptions d;
    d.skip_missing_images = a.skip_missing;
    d.cache_bytes = static_cast<std::size_t>(a.cache_mib) << 20;
    d.clip_caption_tokens = a.clip_tokens;
    if (!features.empty()) {
      FeatureSet set = load_features(features);
      check_cache(flag, features, set);
      d.features = set.features;
      d.feature_image_ids = set.image_ids;
    }
    return d;
  };
  if (chatty && !a.features.empty() && a.weights.empty() && !a.resume && a.init_from.empty())
    std::cerr << "imcap: warning: --features without --weights: the saved model's CNN is "
                 "randomly initialised; pass the weights that computed the features so that the "
                 "model can caption images\n";
  CocoDataset train(std::move(train_annotations), a.images, model->vocab(), train_tf,
                    dataset_options(a.features, "--features"));
  std::unique_ptr<CocoDataset> val;
  if (val_annotations)
    val = std::make_unique<CocoDataset>(std::move(*val_annotations), a.val_images, model->vocab(),
                                        model->eval_transform(),
                                        dataset_options(a.val_features, "--val-features"));
  TrainerOptions o = a.trainer;
  o.out_dir = a.out;
  if (o.objective == Objective::kScst && !a.lr_given) o.lr = train_defaults::kScstLearningRate;
  // A time budget is the run's length unless epochs are given too.
  o.epochs = a.epochs > 0 ? a.epochs : (o.max_seconds > 0 ? kMaxEpochs : TrainerOptions{}.epochs);
  o.resume = a.resume;
  o.process_group = group;
  if (group && chatty)
    fmt::print("data-parallel on {} processes ({}), {} captions per process and step\n",
               group->world_size(), group->backend(),
               (o.batch_size + static_cast<std::size_t>(group->world_size()) - 1) /
                   static_cast<std::size_t>(group->world_size()));
  if (chatty)
    fmt::print(
        "training {} ({}), {} captions of {} images, vocabulary {}, {} trainable parameters, "
        "threads: {}\n",
        to_string(cfg.encoder.arch),
        cfg.decoder_kind == DecoderKind::kAttention
            ? fmt::format(
                  "attention, grid {}{}{}",
                  cfg.grid > 0 ? fmt::format("{0}x{0}", cfg.grid) : std::string("as the CNN's map"),
                  cfg.attention.grid_positions ? ", with positions" : "",
                  cfg.attention.mean_feature ? ", the grid's mean at every step" : "")
            : to_string(cfg.decoder.image_inject),
        train.size(), train.num_images(), model->vocab().size(),
        [&] {
          std::int64_t n = 0;
          for (const auto& p : model->encoder()->parameters())
            n += p.requires_grad() ? p.numel() : 0;
          for (const auto& p : model->decoder_module().parameters())
            n += p.requires_grad() ? p.numel() : 0;
          return n;
        }(),
        describe_threads());
  if (chatty && train.has_features())
    fmt::print("augmentation: none (cached features)\n");
  else if (chatty)
    fmt::print(
        "augmentation: {}; {}\n",
        tf.resize == tf.crop
            ? fmt::format("the whole images, resized to {} px (of non-square ones a "
                          "random square)",
                          tf.crop)
            : fmt::format("random {}-px crops of the {}-px resized images", tf.crop, tf.resize),
        tf.flip_probability > 0
            ? fmt::format("horizontal flips with probability {:g}, 'left' and 'right' "
                          "swapped in the flipped images' captions",
                          tf.flip_probability)
            : std::string("no horizontal flips (--flip-probability turns them on)"));
  if (chatty && val)
    fmt::print(
        "validation: {} images at the end of each epoch{} and when the run stops; "
        "best.imcap keeps the best CIDEr\n",
        o.val_max_images == 0 ? val->num_images() : std::min(val->num_images(), o.val_max_images),
        o.val_every_steps > 0 ? fmt::format(", every {} steps", o.val_every_steps) : std::string());
  if (chatty && o.objective == Objective::kScst)
    fmt::print(
        "self-critical training: {} samples per image (temperature {:g}{}), baseline {}, reward "
        "{}{}{}{}{}, learning rate {:g}\n",
        o.scst.samples, o.scst.temperature,
        o.scst.top_k > 0 ? fmt::format(", top {}", o.scst.top_k) : std::string(),
        to_string(o.scst.baseline),
        o.scst.cider_weight > 0 ? fmt::format("{:g} x CIDEr-D", o.scst.cider_weight)
                                : std::string(),
        o.scst.bleu_weight > 0
            ? fmt::format("{}{:g} x BLEU-4", o.scst.cider_weight > 0 ? " + " : "",
                          o.scst.bleu_weight)
            : std::string(),
        o.scst.reward_end ? ", <end> counted" : "",
        o.scst.relative_advantage ? ", advantages relative to the mean reward" : "",
        describe_xe_weight(o.scst.xe_weight), o.lr);
  Trainer trainer(*model, train, val.get(), o);
  Trainer::install_signal_handlers();
  const auto r = trainer.fit();
  if (!chatty) return;
  const double training_seconds = std::max(1e-9, r.seconds - r.validation_seconds);
  fmt::print(
      "{} steps ({:.0f} captions, {:.1f} captions/s outside validation), {} epochs, last loss "
      "{:.4f}, {:.1f} s ({:.1f} s validating){}\n",
      r.steps, r.captions, r.captions / training_seconds, r.epochs_completed, r.last_loss,
      r.seconds, r.validation_seconds,
      r.stopped_early ? " (stopped early; --resume continues)" : "");
  if (o.objective == Objective::kScst)
    fmt::print("last mean reward {:.4f}; scoring the rewards took {:.1f} % of the training time\n",
               r.last_reward, 100.0 * r.reward_share);
  if (r.has_validation)
    fmt::print("best validation: BLEU-4 {:.4f} CIDEr {:.4f} loss {:.4f}\n", r.best_validation.bleu4,
               r.best_validation.cider, r.best_validation.loss);
  fmt::print("wrote {}\n", last);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a captioning model on a COCO-format dataset");
  cmd->add_option("--annotations", a->annotations,
                  "Training captions: COCO's captions JSON, or Karpathy's dataset_coco.json with "
                  "--split")
      ->required();
  add_split_option(cmd, a->split);
  cmd->add_option("--images", a->images, "Training image folder (or --features)");
  cmd->add_option("--features", a->features,
                  "Pooled CNN features of the training images (from imcap features): trains the "
                  "decoder and embedding head without running the CNN");
  cmd->add_option("--val-annotations", a->val_annotations,
                  "Validation captions (COCO's JSON, or Karpathy's with --val-split)");
  add_split_option(cmd, a->val_split, "--val-split", "--val-annotations");
  cmd->add_option("--val-images", a->val_images, "Validation image folder");
  cmd->add_option("--val-features", a->val_features,
                  "Pooled CNN features of the validation images (from imcap features)");
  cmd->add_option("--out", a->out, "Output folder: last.imcap, best.imcap, log.jsonl")->required();
  add_enum_option(cmd, "--encoder", a->model.encoder.arch, "CNN");
  cmd->add_option("--weights", a->weights,
                  "Pretrained CNN weights (torchvision .pth or safetensors)");
  cmd->add_option(
         "--trainable-stages", a->trainable,
         "CNN stages that train: auto (none with --weights, all without), none, all or 0-5")
      ->capture_default_str();
  cmd->add_option("--image-size", a->model.image_crop,
                  "Crop side in pixels (resized to 256/224 of it first)")
      ->capture_default_str()
      ->check(CLI::Range(16, 4096));
  cmd->add_option("--image-resize", a->resize,
                  "Shorter side the images are resized to before the crop (default: --image-size, "
                  "the whole image, when the CNN trains from scratch; 256/224 of it, the seed's, "
                  "with --weights or --features, as imcap features computes them)")
      ->check(CLI::Range(16, 8192));
  add_enum_option(cmd, "--decoder", a->model.decoder_kind,
                  "show-tell (the image as one vector) or attention (Show, Attend and Tell: soft "
                  "attention over the CNN's grid)");
  cmd->add_option("--embed-size", a->model.encoder.embed_size,
                  fmt::format("Image/word embedding size (attention: word embedding, default {})",
                              AttentionDecoderOptions{}.embed_size))
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--hidden-size", a->model.decoder.hidden_size,
                  fmt::format("LSTM hidden size (attention: default {})",
                              AttentionDecoderOptions{}.hidden_size))
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--attention-dim", a->model.attention.attention_dim,
                  "attention: size of the attention's hidden layer")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--grid", a->model.grid,
                  "attention: pool the CNN's map to this many positions per side (0: as it is, "
                  "7x7 at 224 px)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  cmd->add_flag("--grid-positions", a->model.attention.grid_positions,
                "attention: give each position its x and y as two more channels, so that the "
                "attended context says where the decoder looked (sgrvinod's decoder does not)");
  cmd->add_flag("--mean-feature", a->model.attention.mean_feature,
                "attention: feed the grid's mean to the LSTM at every step beside the attended "
                "feature, as the top-down model does (sgrvinod's reads it once, before the "
                "first word)");
  cmd->add_option("--attention-reg", a->model.attention.attention_reg,
                  "attention: weight of the doubly stochastic penalty (each position looked at "
                  "about once per caption, max(1, words/positions) times on small grids; 0: off)")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e6));
  cmd->add_option("--num-layers", a->model.decoder.num_layers, "LSTM layers")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--dropout", a->model.decoder.dropout,
                  fmt::format("Dropout between LSTM layers (attention: on h before the output "
                              "layer, default {})",
                              AttentionDecoderOptions{}.dropout))
      ->capture_default_str()
      ->check(finite_range(0.0, 0.99));
  add_enum_option(cmd, "--inject", a->model.decoder.image_inject,
                  "Where the image enters the LSTM: pre (Show and Tell), par, init");
  cmd->add_flag("--head-batch-norm", a->model.encoder.head_batch_norm,
                "BatchNorm1d after the encoder's embedding (tutorial variant)");
  cmd->add_option("--vocab-threshold", a->vocab.threshold,
                  "Minimum word count (ruotianluo's prepro_labels.py --word_count_threshold 5 "
                  "keeps words seen more than 5 times: --vocab-threshold 6)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000000));
  cmd->add_option("--clip-captions", a->clip_tokens,
                  "Cut training captions to this many words (prepro_labels.py's max_length: 16); "
                  "0 keeps them whole, as the notebook does")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  cmd->add_option("--epochs", a->epochs,
                  fmt::format("Epochs (default {}; with --max-seconds, as many as fit in the time)",
                              TrainerOptions{}.epochs))
      ->check(CLI::Range(1, kMaxEpochs));
  cmd->add_option("--batch-size", a->trainer.batch_size,
                  "Captions per step (all processes together when data-parallel)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  add_enum_option(cmd, "--batching", a->trainer.batching,
                  "padded, same_length (the seed's sampler) or image_major");
  add_enum_option(cmd, "--optimizer", a->trainer.optimizer, "adam or sgd");
  cmd->add_option("--lr", a->trainer.lr,
                  fmt::format("Learning rate (with --objective scst: {:g} unless given)",
                              train_defaults::kScstLearningRate))
      ->capture_default_str()
      ->check(finite_above(0.0, 100.0));
  cmd->add_option("--weight-decay", a->trainer.weight_decay, "L2 penalty")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e3));
  cmd->add_option("--clip", a->trainer.clip_norm, "Gradient-norm clipping (0: off)")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e9));
  add_enum_option(cmd, "--lr-schedule", a->trainer.lr_schedule, "none, step or plateau");
  cmd->add_option("--lr-step-epochs", a->trainer.lr_step_epochs,
                  "step schedule: epochs between two cuts of the learning rate")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--lr-gamma", a->trainer.lr_gamma,
                  "step and plateau schedules: the factor of each cut")
      ->capture_default_str()
      ->check(finite_above(0.0, 1.0));
  cmd->add_option("--lr-patience", a->trainer.lr_patience,
                  "plateau schedule: epochs without a better validation before a cut")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--lr-anneal-share", a->trainer.lr_anneal_share,
                  "The last share of the budget (--max-seconds, --max-steps or --epochs, "
                  "whichever ends first) trains at the rate times --lr-anneal-factor (0: off)")
      ->capture_default_str()
      ->check(finite_range(0.0, 0.99));
  cmd->add_option("--lr-anneal-factor", a->trainer.lr_anneal_factor,
                  "The factor of that end-of-budget cut of the rate")
      ->capture_default_str()
      ->check(finite_above(0.0, 1.0));
  cmd->add_option("--max-seconds", a->trainer.max_seconds,
                  "Stop cleanly and save after this many seconds")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e9));
  cmd->add_option("--max-steps", a->trainer.max_steps,
                  "Stop cleanly and save after this many steps")
      ->capture_default_str();
  cmd->add_option("--val-max-images", a->trainer.val_max_images,
                  "Images captioned per validation (0: all)")
      ->capture_default_str();
  cmd->add_option("--val-every", a->trainer.val_every_steps,
                  "Also validate every this many steps (0: at the end of each epoch and at the "
                  "stop only)")
      ->capture_default_str();
  cmd->add_option("--log-interval", a->trainer.log_interval, "Steps between log lines")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--flip-probability", a->flip,
                  "Chance of a horizontal flip in training; 'left' and 'right' are swapped in the "
                  "flipped images' captions (keep 0 for text, digits or handedness)")
      ->capture_default_str()
      ->check(finite_range(0.0, 1.0));
  cmd->add_flag("--resume", a->resume, "Continue from OUT/last.imcap");
  cmd->add_flag("--skip-missing-images", a->skip_missing,
                "Train without the images whose files are missing (a warning lists them) "
                "instead of stopping with the list");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--seed", a->trainer.seed, "Random seed")->capture_default_str();
  add_thread_options(cmd, a->threads, a->blas_threads);
  cmd->add_option("--cache-images", a->cache_mib,
                  "MiB of decoded, resized images kept in memory for the next epochs, for each of "
                  "the training and validation sets (0: decode every time)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--workers", a->trainer.workers, "Image decoding threads")
      ->capture_default_str()
      ->check(CLI::Range(0, 256));
  cmd->add_option("--nproc", a->nproc,
                  "Train data-parallel in this many local processes (as torchrun would start "
                  "them); 0: one process, or the launcher's environment (docs/distributed.md)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--dist-timeout", a->dist_timeout,
                  "Seconds a data-parallel process waits for the others (rendezvous, each "
                  "collective) before it fails")
      ->capture_default_str()
      ->check(finite_above(0.0, DistributedOptions::kMaxTimeoutSeconds));
  add_enum_option(cmd, "--objective", a->trainer.objective,
                  "What training optimises: xe (cross-entropy, teacher forcing) or scst "
                  "(self-critical: the CIDEr-D of sampled captions; needs --init-from)");
  cmd->add_option("--init-from", a->init_from,
                  "Start from this model file (weights, architecture and vocabulary; e.g. a "
                  "cross-entropy run's best.imcap) with a fresh optimizer")
      ->excludes("--resume")
      ->excludes("--encoder")
      ->excludes("--weights")
      ->excludes("--trainable-stages")
      ->excludes("--image-size")
      ->excludes("--image-resize")
      ->excludes("--embed-size")
      ->excludes("--hidden-size")
      ->excludes("--num-layers")
      ->excludes("--dropout")
      ->excludes("--inject")
      ->excludes("--head-batch-norm")
      ->excludes("--decoder")
      ->excludes("--attention-dim")
      ->excludes("--grid")
      ->excludes("--grid-positions")
      ->excludes("--mean-feature")
      ->excludes("--attention-reg")
      ->excludes("--vocab-threshold");
  cmd->add_option("--samples", a->trainer.scst.samples, "SCST: captions sampled per image")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  add_enum_option(cmd, "--baseline", a->trainer.scst.baseline,
                  "SCST: what a sample's reward is compared with: greedy (the greedy caption's "
                  "reward) or mean (the image's other samples')");
  cmd->add_option("--temperature", a->trainer.scst.temperature, "SCST: sampling temperature")
      ->capture_default_str()
      ->check(finite_above(0.0, 100.0));
  cmd->add_option("--top-k", a->trainer.scst.top_k,
                  "SCST: sample only from the k most likely words (0: all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option(
         "--max-length", a->trainer.scst.max_length,
         "SCST: most tokens per sampled caption, counted as --max-length of predict counts "
         "them (<end>, and a Show and Tell model's leading <start>)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1000));
  cmd->add_option("--cider-weight", a->trainer.scst.cider_weight,
                  "SCST: weight of CIDEr-D in the reward")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e6));
  cmd->add_option("--bleu-weight", a->trainer.scst.bleu_weight,
                  "SCST: weight of sentence BLEU-4 in the reward")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e6));
  cmd->add_option("--xe-weight", a->trainer.scst.xe_weight,
                  "SCST: weight of the references' cross-entropy added to the loss (0: none)")
      ->capture_default_str()
      ->check(finite_range(0.0, 1e6));
  cmd->add_flag("--reward-end,!--no-reward-end", a->trainer.scst.reward_end,
                "SCST: the end of a caption counts as a word in the reward")
      ->capture_default_str();
  cmd->add_flag("--relative-advantage,!--no-relative-advantage", a->trainer.scst.relative_advantage,
                "SCST: divide each sample's advantage by the batch's mean reward, so that the "
                "balance with --xe-weight holds whatever the reward's scale")
      ->capture_default_str();
  cmd->callback([a, cmd] {
    a->lr_given = cmd->count("--lr") > 0;
    a->embed_given = cmd->count("--embed-size") > 0;
    a->hidden_given = cmd->count("--hidden-size") > 0;
    a->dropout_given = cmd->count("--dropout") > 0;
    a->show_tell_only.clear();
    for (const char* name : {"--inject", "--num-layers", "--head-batch-norm"})
      if (cmd->count(name) > 0) a->show_tell_only.emplace_back(name);
    a->attention_only.clear();
    for (const char* name :
         {"--attention-dim", "--grid", "--grid-positions", "--mean-feature", "--attention-reg"})
      if (cmd->count(name) > 0) a->attention_only.emplace_back(name);
    run_train(*a);
  });
}

}  // namespace imcap::cli
