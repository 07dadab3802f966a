// Small models, datasets and trainer options shared by the training tests: a ResNet-18 at 32 px
// under a small head, synthetic scenes, and a short image-major run.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "imcap/model.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/trainer.hpp"
#include "imcap/vocabulary.hpp"
#include "support.hpp"

namespace imcap::test {

/// What varies between the tests' small models; the defaults are the library's.
struct TinyConfig {
  std::int64_t embed_size = 16;
  std::int64_t hidden_size = 32;
  ImageInject inject = ImageInject::kPre;
  int trainable_stages = 0;
  bool head_batch_norm = false;
};

/// ResNet-18 at 32 px (resize == crop) with the given head and decoder sizes.
inline ModelConfig tiny_config(const TinyConfig& t = {}) {
  ModelConfig c;
  c.encoder.arch = ResNetArch::kResNet18;
  c.encoder.embed_size = t.embed_size;
  c.encoder.head_batch_norm = t.head_batch_norm;
  c.encoder.trainable_stages = t.trainable_stages;
  c.decoder.hidden_size = t.hidden_size;
  c.decoder.image_inject = t.inject;
  c.image_resize = 32;
  c.image_crop = 32;
  return c;
}

/// tiny_config's ResNet-18 at 64 px (a 2 x 2 map: P = 4) with a small attention decoder.
inline ModelConfig tiny_attention_config(double dropout = 0.0) {
  ModelConfig c = tiny_config();
  c.image_resize = 64;
  c.image_crop = 64;
  c.decoder_kind = DecoderKind::kAttention;
  c.attention.embed_size = 12;
  c.attention.hidden_size = 16;
  c.attention.attention_dim = 8;
  c.attention.dropout = dropout;
  return c;
}

/// A tiny_config model whose random weights come from `seed`.
inline CaptionModel tiny_model(const Vocabulary& vocab, std::uint64_t seed,
                               const TinyConfig& t = {}) {
  torch::manual_seed(seed);
  return CaptionModel(tiny_config(t), vocab);
}

/// Synthetic 32-px scenes in a temporary folder, and their vocabulary (threshold 1).
struct TinyDataset {
  TempDir tmp;
  SyntheticDataset files;
  std::unique_ptr<Vocabulary> vocab;

  explicit TinyDataset(int train_images = 24, int val_images = 6) {
    SyntheticOptions so;
    so.train_images = train_images;
    so.val_images = val_images;
    so.image_size = 32;
    files = generate_synthetic_dataset(tmp.file("data"), so);
    vocab = std::make_unique<Vocabulary>(Vocabulary::build({files.train_annotations}, {1}));
  }
};

/// Two image-major epochs of 20 captions, one loader thread, no progress bar, 6 images scored.
inline TrainerOptions tiny_trainer_options(const std::string& out_dir) {
  TrainerOptions o;
  o.out_dir = out_dir;
  o.epochs = 2;
  o.batch_size = 20;
  o.batching = BatchMode::kImageMajor;
  o.workers = 1;
  o.progress = false;
  o.val_max_images = 6;
  return o;
}

/// `args` followed by the command-line flags of tiny_config's sizes (32 px, E 16, H 32) and a
/// vocabulary threshold of 1.
inline std::vector<std::string> with_tiny_flags(std::vector<std::string> args) {
  args.insert(args.end(), {"--image-size", "32", "--embed-size", "16", "--hidden-size", "32",
                           "--vocab-threshold", "1"});
  return args;
}

/// `imcap train` on a TinyDataset's images and validation split into `out`, with tiny_config's
/// ResNet-18 and sizes, then `extra`.
inline std::vector<std::string> tiny_train_args(const SyntheticDataset& f, const std::string& out,
                                                const std::vector<std::string>& extra) {
  auto args =
      with_tiny_flags({"train", "--annotations", f.train_annotations, "--images", f.train_images,
                       "--val-annotations", f.val_annotations, "--val-images", f.val_images,
                       "--out", out, "--encoder", "resnet18"});
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

/// A TinyDataset with a par-inject model whose last ResNet stage trains.
struct Tiny : TinyDataset {
  CaptionModel model() const {
    TinyConfig t;
    t.inject = ImageInject::kPar;
    t.trainable_stages = 1;
    return tiny_model(*vocab, 5, t);
  }
  TrainerOptions options(const std::string& out) const {
    return tiny_trainer_options(tmp.file(out));
  }
  CocoDataset split(bool training, const CaptionModel& m) const {
    return training
               ? CocoDataset(files.train_annotations, files.train_images, *vocab,
                             m.eval_transform())
               : CocoDataset(files.val_annotations, files.val_images, *vocab, m.eval_transform());
  }
};

}  // namespace imcap::test
