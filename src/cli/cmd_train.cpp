// imcap train: train a captioning model on a COCO-format folder.
#include <chrono>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <torch/torch.h>

#include "cli/cli_common.hpp"
#include "cli/commands.hpp"
#include "detail/io.hpp"
#include "imcap/error.hpp"
#include "imcap/features.hpp"
#include "imcap/trainer.hpp"
#include "imcap/weights.hpp"

namespace imcap::cli {

namespace {

struct TrainArgs {
  std::string annotations, images, val_annotations, val_images, out, features, val_features;
  std::string encoder = "resnet50", weights, device = "cpu", inject = "par", trainable = "auto";
  std::string optimizer = "adam", schedule = "none", batching = "image_major";
  int image_size = 224, vocab_threshold = 5, epochs = 3, threads = 0, workers = 2;
  std::int64_t embed_size = 256, hidden_size = 512, num_layers = 1;
  std::size_t batch_size = 64, log_interval = 50, val_max_images = 500, max_steps = 0;
  double lr = 1e-3, max_seconds = 0, clip = 5.0, weight_decay = 0, dropout = 0, flip = 0.5;
  std::uint64_t seed = 1;
  bool resume = false, head_bn = false;
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

void run_train(const TrainArgs& a) {
  set_threads(a.threads);
  if (a.images.empty() && a.features.empty())
    throw UsageError("--images or --features is required");
  if (!a.val_annotations.empty() && a.val_images.empty() && a.val_features.empty())
    throw UsageError("--val-annotations needs --val-images or --val-features");
  if (a.val_annotations.empty() && !(a.val_images.empty() && a.val_features.empty()))
    throw UsageError("--val-images and --val-features need --val-annotations");
  const torch::Device device = parse_device(a.device);
  const std::string last = detail::join_path(a.out, "last.imcap");
  torch::manual_seed(a.seed);
  std::unique_ptr<CaptionModel> model;
  if (a.resume) {
    model = std::make_unique<CaptionModel>(CaptionModel::load(last, device));
  } else {
    ModelConfig config;
    config.encoder.arch = parse_resnet_arch(a.encoder);
    config.encoder.embed_size = a.embed_size;
    config.encoder.head_batch_norm = a.head_bn;
    // Precomputed features come from a frozen CNN: "auto" freezes it.
    config.encoder.trainable_stages =
        parse_trainable(a.trainable, !a.weights.empty() || !a.features.empty());
    config.decoder.hidden_size = a.hidden_size;
    config.decoder.num_layers = a.num_layers;
    config.decoder.dropout = a.dropout;
    config.decoder.image_inject = parse_image_inject(a.inject);
    config.image_crop = a.image_size;
    config.image_resize = static_cast<int>(a.image_size * 256.0 / 224.0 + 0.5);
    VocabularyOptions vo;
    vo.threshold = a.vocab_threshold;
    model = std::make_unique<CaptionModel>(config, Vocabulary::build({a.annotations}, vo));
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
  // With --features the CNN does not run: the dataset hands out the cached pooled features.
  auto dataset_options = [](const std::string& features) {
    CocoDatasetOptions d;
    if (!features.empty()) {
      FeatureSet set = load_features(features);
      d.features = set.features;
      d.feature_image_ids = set.image_ids;
    }
    return d;
  };
  if (!a.features.empty() && a.weights.empty() && !a.resume)
    std::cerr << "imcap: warning: --features without --weights: the saved model's CNN is "
                 "randomly initialised; pass the weights that computed the features so that the "
                 "model can caption images\n";
  CocoDataset train(a.annotations, a.images, model->vocab(), train_tf, dataset_options(a.features));
  std::unique_ptr<CocoDataset> val;
  if (!a.val_annotations.empty())
    val = std::make_unique<CocoDataset>(a.val_annotations, a.val_images, model->vocab(),
                                        model->eval_transform(), dataset_options(a.val_features));
  TrainerOptions o;
  o.out_dir = a.out;
  o.epochs = a.epochs;
  o.batch_size = a.batch_size;
  o.batching = parse_batch_mode(a.batching);
  o.optimizer = a.optimizer;
  o.lr = a.lr;
  o.weight_decay = a.weight_decay;
  o.clip_norm = a.clip;
  o.lr_schedule = parse_lr_schedule(a.schedule);
  o.log_interval = a.log_interval;
  o.seed = a.seed;
  o.workers = a.workers;
  o.max_seconds = a.max_seconds;
  o.max_steps = a.max_steps;
  o.val_max_images = a.val_max_images;
  o.resume = a.resume;
  fmt::print("training {} ({}), {} captions of {} images, vocabulary {}, {} trainable parameters\n",
             to_string(cfg.encoder.arch), to_string(cfg.decoder.image_inject), train.size(),
             train.num_images(), model->vocab().size(), [&] {
               std::int64_t n = 0;
               for (const auto& p : model->encoder()->parameters())
                 n += p.requires_grad() ? p.numel() : 0;
               for (const auto& p : model->decoder()->parameters())
                 n += p.requires_grad() ? p.numel() : 0;
               return n;
             }());
  Trainer trainer(*model, train, val.get(), o);
  Trainer::install_signal_handlers();
  const auto r = trainer.fit();
  fmt::print("{} steps, {} epochs, last loss {:.4f}, {:.1f} s{}\n", r.steps, r.epochs_completed,
             r.last_loss, r.seconds, r.stopped_early ? " (stopped early; --resume continues)" : "");
  if (r.has_validation)
    fmt::print("best validation: BLEU-4 {:.4f} CIDEr {:.4f} loss {:.4f}\n", r.best_validation.bleu4,
               r.best_validation.cider, r.best_validation.loss);
  fmt::print("wrote {}\n", last);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a captioning model on a COCO-format dataset");
  cmd->add_option("--annotations", a->annotations, "Training COCO captions JSON")->required();
  cmd->add_option("--images", a->images, "Training image folder (or --features)");
  cmd->add_option("--features", a->features,
                  "Pooled CNN features of the training images (from imcap features): trains the "
                  "decoder and embedding head without running the CNN");
  cmd->add_option("--val-annotations", a->val_annotations, "Validation COCO captions JSON");
  cmd->add_option("--val-images", a->val_images, "Validation image folder");
  cmd->add_option("--val-features", a->val_features,
                  "Pooled CNN features of the validation images (from imcap features)");
  cmd->add_option("--out", a->out, "Output folder: last.imcap, best.imcap, log.jsonl")->required();
  cmd->add_option("--encoder", a->encoder, "CNN")
      ->capture_default_str()
      ->check(CLI::IsMember({"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}));
  cmd->add_option("--weights", a->weights,
                  "Pretrained CNN weights (torchvision .pth or safetensors)");
  cmd->add_option(
         "--trainable-stages", a->trainable,
         "CNN stages that train: auto (none with --weights, all without), none, all or 0-5")
      ->capture_default_str();
  cmd->add_option("--image-size", a->image_size,
                  "Crop side in pixels (resized to 256/224 of it first)")
      ->capture_default_str()
      ->check(CLI::Range(16, 4096));
  cmd->add_option("--embed-size", a->embed_size, "Image/word embedding size")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--hidden-size", a->hidden_size, "LSTM hidden size")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--num-layers", a->num_layers, "LSTM layers")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--dropout", a->dropout, "Dropout between LSTM layers")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--inject", a->inject,
                  "Where the image enters the LSTM: pre (Show and Tell), par, init")
      ->capture_default_str()
      ->check(CLI::IsMember({"pre", "par", "init"}));
  cmd->add_flag("--head-batch-norm", a->head_bn,
                "BatchNorm1d after the encoder's embedding (tutorial variant)");
  cmd->add_option("--vocab-threshold", a->vocab_threshold, "Minimum word count")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--epochs", a->epochs, "Epochs")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--batch-size", a->batch_size, "Captions per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--batching", a->batching,
                  "padded, same_length (the seed's sampler) or image_major")
      ->capture_default_str()
      ->check(CLI::IsMember({"padded", "same_length", "image_major"}));
  cmd->add_option("--optimizer", a->optimizer, "adam or sgd")
      ->capture_default_str()
      ->check(CLI::IsMember({"adam", "sgd"}));
  cmd->add_option("--lr", a->lr, "Learning rate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--weight-decay", a->weight_decay, "L2 penalty")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--clip", a->clip, "Gradient-norm clipping (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--lr-schedule", a->schedule, "none, step or plateau")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "step", "plateau"}));
  cmd->add_option("--max-seconds", a->max_seconds, "Stop cleanly and save after this many seconds")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-steps", a->max_steps, "Stop cleanly and save after this many steps")
      ->capture_default_str();
  cmd->add_option("--val-max-images", a->val_max_images, "Images captioned per validation (0: all)")
      ->capture_default_str();
  cmd->add_option("--log-interval", a->log_interval, "Steps between log lines")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--flip-probability", a->flip,
                  "Chance of a horizontal flip in training (0 when captions say left and right)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_flag("--resume", a->resume, "Continue from OUT/last.imcap");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  cmd->add_option("--threads", a->threads, "Torch threads (0: one per core)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--workers", a->workers, "Image decoding threads")
      ->capture_default_str()
      ->check(CLI::Range(0, 256));
  cmd->callback([a] { run_train(*a); });
}

}  // namespace imcap::cli
