// The defaults of `imcap train` that `imcap bench`'s end-to-end training figure measures, in one
// place (docs/training.md#defaults says how they were chosen).
#pragma once

#include <cstddef>
#include <cstdint>

namespace imcap::cli::train_defaults {

inline constexpr std::size_t kBatchSize = 64;  // captions per step (image-major batches)
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
