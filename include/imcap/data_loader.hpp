// Batches of images and captions for training (the seed's data_loader.py), loaded by worker
// threads in a deterministic order.
//
//   imcap::DataLoaderOptions opts;
//   opts.batch_size = 64;
//   imcap::DataLoader loader(dataset, opts);
//   for (std::size_t epoch = 0; epoch < 10; ++epoch) {
//     loader.start_epoch(epoch);
//     while (auto batch = loader.next()) { /* batch->images, batch->captions, ... */ }
//   }
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "imcap/coco_dataset.hpp"

namespace imcap {

/// How captions are grouped into batches.
enum class BatchMode {
  /// Random captions, padded to the longest one, with lengths and a mask (the default).
  kPadded,
  /// The seed's sampler: each batch draws a caption length, weighted by how many captions have
  /// it, then samples (with replacement) batch_size captions of exactly that length: no padding.
  kSameLength,
  /// Random images with all of their captions: each image is decoded and encoded once for
  /// several captions. batch_size counts captions; a batch holds whole images.
  kImageMajor,
};

/// Parses "padded", "same_length" or "image_major"; throws InvalidArgument otherwise.
BatchMode parse_batch_mode(const std::string& name);
/// The name parse_batch_mode accepts.
std::string to_string(BatchMode mode);

/// Options of DataLoader.
struct DataLoaderOptions {
  std::size_t batch_size = 64;          ///< captions per batch. Default 64.
  BatchMode mode = BatchMode::kPadded;  ///< grouping of captions. Default padded.
  bool shuffle = true;     ///< random order each epoch (from seed and epoch). Default true.
  bool drop_last = false;  ///< drop a final smaller batch. Default false.
  std::uint64_t seed = 0;  ///< seeds the order and the random transforms. Default 0.
  int workers = 2;         ///< threads that decode and transform images (0 = in next()). Default 2.
  std::size_t prefetch = 4;  ///< batches prepared ahead of the consumer. Default 4.
  bool load_images = true;   ///< false: captions only (images stays undefined). Default true.
  /// Workers copy each batch's tensors into page-locked memory, so that copies to a GPU with
  /// non_blocking=true do not make the host wait. Needs CUDA. Default false.
  bool pin_memory = false;
  /// Data parallelism: each planned batch is cut into shard_count contiguous parts (in
  /// image_major mode at image boundaries) and this loader yields part shard_index. The plan is
  /// the same for every shard (it depends on seed, epoch and batch_size only), so the shards of
  /// an epoch are disjoint and together are the one-process epoch. Default 1 (no sharding).
  std::size_t shard_count = 1;
  std::size_t shard_index = 0;  ///< the part this loader yields, 0 to shard_count - 1. Default 0.
};

/// One batch. Images appear once even when several of their captions are in the batch.
struct Batch {
  at::Tensor images;       ///< [U, 3, H, W] float32: the distinct images of the batch
  at::Tensor image_index;  ///< [B] int64: row of `images` for each caption
  at::Tensor captions;     ///< [B, T] int64: <start> ... <end>, then padding
  at::Tensor lengths;      ///< [B] int64: tokens per caption, <start> and <end> included
  at::Tensor mask;         ///< [B, T] bool: true on real tokens
  std::vector<std::int64_t> image_ids;       ///< [U] COCO image id of each row of `images`
  std::vector<std::size_t> caption_indices;  ///< [B] dataset caption index of each row
  std::size_t index = 0;                     ///< position of the batch in its epoch
  std::size_t global_size = 0;               ///< captions of the whole batch, all shards together

  std::size_t size() const { return caption_indices.size(); }
};

/// Produces the batches of an epoch. For a given seed, epoch and options the batches and the
/// random transforms are identical whatever the number of workers. A shard's batch may be empty
/// (fewer captions or images than shards); it then has no images and zero-row tensors.
class DataLoader {
 public:
  /// The dataset must outlive the loader. Throws InvalidArgument for a zero batch size or an
  /// empty dataset.
  DataLoader(const CocoDataset& dataset, DataLoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  /// Plans epoch `epoch` (its permutation derives from seed and epoch) and starts the workers.
  void start_epoch(std::size_t epoch);
  /// The next batch of the epoch, or nullopt at its end. Rethrows a worker's exception
  /// (e.g. an unreadable image) here.
  std::optional<Batch> next();
  /// Skips the first n batches of the current epoch without loading them (resume).
  void skip(std::size_t n);
  /// Number of batches in one epoch (in image_major mode, of the current epoch, whose
  /// shuffled image order decides how whole images fill the batches).
  std::size_t batches_per_epoch() const;
  /// Number of batches in epoch `epoch` (0-based), without starting it.
  std::size_t batches_in_epoch(std::size_t epoch) const;

  const DataLoaderOptions& options() const { return options_; }

 private:
  struct State;
  std::vector<std::vector<std::size_t>> make_plan(std::size_t epoch) const;

  const CocoDataset& dataset_;
  DataLoaderOptions options_;
  std::unique_ptr<State> state_;
};

/// Pads token sequences into a Batch's captions/lengths/mask (no images); pad_id fills the rest.
void pad_captions(const std::vector<const std::vector<std::int64_t>*>& sequences,
                  std::int64_t pad_id, Batch& batch);

}  // namespace imcap
