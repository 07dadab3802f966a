// BatchingCaptioner: one Captioner shared by many threads, whose concurrent requests are gathered
// into batched searches (dynamic batching, as TorchServe's max batch size and max delay).
//
//   auto captioner = std::make_shared<const imcap::Captioner>(imcap::Captioner::load("m.imcap"));
//   imcap::BatchingCaptioner batcher(captioner, {/*max_batch=*/8});
//   // on any number of threads:
//   std::future<imcap::BatchResult> f = batcher.submit({imcap::decode_image("dog.jpg")});
//   imcap::Caption best = f.get().captions.front().front();
//
// One worker thread runs the model. A request waits until max_batch images are queued with the
// same search options, or until max_wait has passed since the oldest of them arrived, whichever
// comes first; their images are then encoded and searched as one batch, and each request gets
// its own rows. A request's images always stay in one batch (a request of more than max_batch
// images is searched alone).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "imcap/captioner.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"

namespace imcap {

/// submit() found the queue full (BatchingOptions::max_queue): try again later.
class QueueFull : public Error {
 public:
  using Error::Error;
};

/// submit() was called after close(): the captioner no longer takes requests.
class Closed : public Error {
 public:
  using Error::Error;
};

/// How requests are gathered.
struct BatchingOptions {
  /// Most images per batched search. Default 8.
  int max_batch = 8;
  /// Longest a request waits for others to share its batch, counted from its arrival. The
  /// worker never waits while max_batch images are ready. Default 2 ms.
  std::chrono::microseconds max_wait = std::chrono::milliseconds(2);
  /// Most images waiting (not yet in a batch); submit() beyond it throws QueueFull. Default 256.
  std::size_t max_queue = 256;
};

/// Where a request's time went, milliseconds.
struct BatchTiming {
  double queue_ms = 0.0;   ///< from submit() to the start of its batch
  double encode_ms = 0.0;  ///< the batch's CNN
  double search_ms = 0.0;  ///< the batch's search (and attention weights when asked for)
  int batch_images = 0;    ///< images in the batch this request was part of
};

/// The result of one request.
struct BatchResult {
  /// Per image of the request, in order: options.num_return captions, best first.
  std::vector<std::vector<Caption>> captions;
  BatchTiming timing;
};

/// Counters since construction.
struct BatchingStats {
  std::uint64_t requests = 0;  ///< requests captioned (or failed inside a batch)
  std::uint64_t images = 0;    ///< their images
  std::uint64_t batches = 0;   ///< batched searches run
  /// batch_sizes[n]: batches of n images (index 0 unused). Sized to the largest batch seen + 1.
  std::vector<std::uint64_t> batch_sizes;
  std::size_t queued_images = 0;    ///< images waiting now
  std::size_t queued_requests = 0;  ///< requests waiting now
};

/// Dynamic batching over a shared Captioner. Thread-safe: submit(), caption() and stats() may be
/// called from any thread.
class BatchingCaptioner {
 public:
  /// Starts the worker thread. Throws InvalidArgument for max_batch < 1, max_queue < 1 or a
  /// negative max_wait.
  explicit BatchingCaptioner(std::shared_ptr<const Captioner> captioner,
                             BatchingOptions options = {});
  /// close(), then waits for the worker.
  ~BatchingCaptioner();
  BatchingCaptioner(const BatchingCaptioner&) = delete;
  BatchingCaptioner& operator=(const BatchingCaptioner&) = delete;

  /// Queues decoded images for captioning with `options` (the Captioner's options when none are
  /// given). The model's eval transform runs on the calling thread, so that callers share that
  /// work. Throws InvalidArgument (no images, bad options), QueueFull or Closed; errors of the
  /// batch itself arrive through the future.
  std::future<BatchResult> submit(const std::vector<Image>& images);
  std::future<BatchResult> submit(const std::vector<Image>& images, const CaptionOptions& options);
  /// The same with images already transformed: [N, 3, H, W] float on the CPU.
  std::future<BatchResult> submit(const at::Tensor& images, const CaptionOptions& options);
  /// submit(images, options).get().
  BatchResult caption(const std::vector<Image>& images, const CaptionOptions& options);

  /// From now on, batches start as soon as the worker is free, without waiting max_wait for
  /// company; requests are still taken. For a server that is shutting down: the requests it has
  /// accepted finish without delay. Idempotent.
  void drain();
  /// Stops taking requests (submit() throws Closed); queued requests are still captioned.
  /// Returns when the last of them has its result. Idempotent.
  void close();

  BatchingStats stats() const;
  const Captioner& captioner() const;
  const BatchingOptions& options() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace imcap
