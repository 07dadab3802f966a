// The defaults of `imcap train` that `imcap bench`'s end-to-end training figure measures, in one
// place (docs/training.md#defaults says how they were chosen).
#pragma once

#include <cstddef>
#include <cstdint>

namespace imcap::cli::train_defaults {

// Captions per step, image-major: about 32 images of 5 captions. The CNN runs 1.4-1.5x more
// images per second at 32 images a step than at 13 (64 captions); see docs/training.md.
inline constexpr std::size_t kBatchSize = 160;
inline constexpr const char* kBatching = "image_major";
inline constexpr const char* kInject = "par";
inline constexpr double kLr = 1e-3;  // Adam
inline constexpr double kClip = 5.0;
inline constexpr std::int64_t kEmbedSize = 256;
inline constexpr std::int64_t kHiddenSize = 512;
inline constexpr int kWorkers = 2;      // image decoding threads
inline constexpr int kCacheMib = 1024;  // decoded images kept, per data set
inline constexpr double kFlipProbability = 0.0;

}  // namespace imcap::cli::train_defaults
