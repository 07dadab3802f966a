// The one default of `imcap train` that is not a library option's (the others are the
// defaults of ModelConfig, TrainerOptions, CocoDatasetOptions and TransformOptions; see
// docs/training.md#defaults).
#pragma once

namespace imcap::cli::train_defaults {

// The shorter side before the crop (--image-resize). A CNN trained from scratch sees the whole
// image: the seed's 256/224 resize and random crop cut 12% off the borders, where objects and
// their "left"/"right" are (on a 128-px set of one or two objects, 300 s: BLEU-4 0.665 and CIDEr
// 3.02 against 0.600 and 2.31). Pretrained ImageNet weights keep the transform they were
// trained with.
inline int image_resize(int image_size, bool pretrained) {
  return pretrained ? static_cast<int>(image_size * 256.0 / 224.0 + 0.5) : image_size;
}

// Self-critical training's learning rate, unless --lr is given: fine-tuning from a
// cross-entropy model needs a smaller step than training from scratch. 2e-4 with the
// references' cross-entropy in the loss (ScstOptions::xe_weight, default 1);
// self-critical.pytorch's 5e-5 suits SCST alone (docs/training.md#self-critical-training-scst).
inline constexpr double kScstLearningRate = 2e-4;

}  // namespace imcap::cli::train_defaults
