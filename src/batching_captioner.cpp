// BatchingCaptioner: a queue of requests, one worker thread that gathers them into batches.
#include "imcap/batching_captioner.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/hypothesis.hpp"

namespace imcap {

namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Requests share a batch only when one search serves them all.
bool same_search(const CaptionOptions& a, const CaptionOptions& b) {
  return a.beam_size == b.beam_size && a.max_length == b.max_length && a.alpha == b.alpha &&
         a.forbid_unk == b.forbid_unk && a.min_length == b.min_length &&
         a.num_return == b.num_return && a.decode_weights == b.decode_weights &&
         a.encoder_dtype == b.encoder_dtype && a.attention_weights == b.attention_weights;
}

struct Request {
  at::Tensor images;  // [N, 3, H, W]
  CaptionOptions options;
  std::promise<BatchResult> promise;
  Clock::time_point arrived;
};

}  // namespace

struct BatchingCaptioner::State {
  std::shared_ptr<const Captioner> captioner;
  BatchingOptions options;
  mutable std::mutex mutex;
  std::condition_variable wake;
  std::deque<std::unique_ptr<Request>> queue;
  std::size_t queued_images = 0;
  bool closing = false;
  bool draining = false;  // batches start without waiting for company
  BatchingStats stats;
  std::thread worker;
  std::once_flag joined;

  // Takes the next batch from the queue (the lock held): the oldest request and the compatible
  // ones behind it, when max_batch images are ready, the oldest has waited max_wait, or the
  // captioner is closing. Empty when the queue is empty and the captioner closed.
  std::vector<std::unique_ptr<Request>> next_batch(std::unique_lock<std::mutex>& lock) {
    for (;;) {
      wake.wait(lock, [&] { return closing || !queue.empty(); });
      if (queue.empty()) return {};
      const Request& first = *queue.front();
      std::int64_t ready = 0;
      for (const auto& r : queue) {
        if (!same_search(r->options, first.options)) continue;
        if (ready > 0 && ready + r->images.size(0) > options.max_batch) break;
        ready += r->images.size(0);
      }
      const auto deadline = first.arrived + options.max_wait;
      if (ready >= options.max_batch || closing || draining || Clock::now() >= deadline) break;
      wake.wait_until(lock, deadline);
    }
    std::vector<std::unique_ptr<Request>> batch;
    std::int64_t images = 0;
    const CaptionOptions leader = queue.front()->options;
    for (auto it = queue.begin(); it != queue.end();) {
      const std::int64_t n = (*it)->images.size(0);
      if (!same_search((*it)->options, leader)) {
        ++it;
        continue;
      }
      if (images > 0 && images + n > options.max_batch) break;
      images += n;
      queued_images -= static_cast<std::size_t>(n);
      batch.push_back(std::move(*it));
      it = queue.erase(it);
    }
    return batch;
  }

  void run(std::vector<std::unique_ptr<Request>>& batch) {
    const auto start = Clock::now();
    const CaptionOptions& options = batch.front()->options;
    std::vector<at::Tensor> parts;
    for (const auto& r : batch) parts.push_back(r->images);
    std::vector<BatchResult> results(batch.size());
    std::int64_t images = 0;
    try {
      const at::Tensor features = captioner->encode(torch::cat(parts), options);
      const auto encoded = Clock::now();
      auto captions = captioner->candidates(features, options);
      const auto searched = Clock::now();
      images = static_cast<std::int64_t>(captions.size());
      std::size_t row = 0;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        const auto n = static_cast<std::size_t>(batch[i]->images.size(0));
        results[i].captions.assign(std::make_move_iterator(captions.begin() + row),
                                   std::make_move_iterator(captions.begin() + row + n));
        row += n;
        results[i].timing = {ms_between(batch[i]->arrived, start), ms_between(start, encoded),
                             ms_between(encoded, searched), static_cast<int>(images)};
      }
    } catch (...) {
      const auto error = std::current_exception();
      record(batch, images);
      for (auto& r : batch) r->promise.set_exception(error);
      return;
    }
    record(batch, images);
    for (std::size_t i = 0; i < batch.size(); ++i)
      batch[i]->promise.set_value(std::move(results[i]));
  }

  void record(const std::vector<std::unique_ptr<Request>>& batch, std::int64_t images) {
    if (images == 0)
      for (const auto& r : batch) images += r->images.size(0);
    const std::lock_guard<std::mutex> lock(mutex);
    stats.requests += batch.size();
    stats.images += static_cast<std::uint64_t>(images);
    stats.batches += 1;
    const auto n = static_cast<std::size_t>(images);
    if (stats.batch_sizes.size() <= n) stats.batch_sizes.resize(n + 1, 0);
    stats.batch_sizes[n] += 1;
  }

  void work() {
    for (;;) {
      std::vector<std::unique_ptr<Request>> batch;
      {
        std::unique_lock<std::mutex> lock(mutex);
        batch = next_batch(lock);
      }
      if (batch.empty()) return;
      run(batch);
    }
  }
};

BatchingCaptioner::BatchingCaptioner(std::shared_ptr<const Captioner> captioner,
                                     BatchingOptions options)
    : state_(std::make_unique<State>()) {
  if (!captioner) throw InvalidArgument("BatchingCaptioner: the captioner is null");
  if (options.max_batch < 1)
    throw InvalidArgument(
        fmt::format("BatchingOptions::max_batch must be >= 1, got {}", options.max_batch));
  if (options.max_queue < 1) throw InvalidArgument("BatchingOptions::max_queue must be >= 1, got 0");
  if (options.max_wait.count() < 0)
    throw InvalidArgument(fmt::format("BatchingOptions::max_wait must be >= 0, got {} us",
                                      options.max_wait.count()));
  state_->captioner = std::move(captioner);
  state_->options = options;
  state_->worker = std::thread([s = state_.get()] { s->work(); });
}

BatchingCaptioner::~BatchingCaptioner() { close(); }

void BatchingCaptioner::drain() {
  {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    state_->draining = true;
  }
  state_->wake.notify_all();
}

void BatchingCaptioner::close() {
  {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    state_->closing = true;
  }
  state_->wake.notify_all();
  std::call_once(state_->joined, [&] {
    if (state_->worker.joinable()) state_->worker.join();
  });
}

std::future<BatchResult> BatchingCaptioner::submit(const at::Tensor& images,
                                                   const CaptionOptions& options) {
  detail::check_search_options(options, "BatchingCaptioner");
  if (!images.defined() || images.dim() != 4 || images.size(0) < 1 || images.size(1) != 3)
    throw InvalidArgument(fmt::format(
        "BatchingCaptioner: expected images [N >= 1, 3, H, W], got {}",
        images.defined() ? fmt::format("[{}]", fmt::join(images.sizes(), ", ")) : "none"));
  auto request = std::make_unique<Request>();
  request->images = images.to(torch::kFloat32).contiguous();
  request->options = options;
  std::future<BatchResult> result = request->promise.get_future();
  const auto n = static_cast<std::size_t>(images.size(0));
  {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->closing) throw Closed("BatchingCaptioner: closed, no longer taking requests");
    if (state_->queued_images + n > state_->options.max_queue && !state_->queue.empty())
      throw QueueFull(fmt::format(
          "BatchingCaptioner: the queue holds {} images and takes at most {} (max_queue)",
          state_->queued_images, state_->options.max_queue));
    request->arrived = Clock::now();
    state_->queued_images += n;
    state_->queue.push_back(std::move(request));
  }
  state_->wake.notify_all();
  return result;
}

std::future<BatchResult> BatchingCaptioner::submit(const std::vector<Image>& images,
                                                   const CaptionOptions& options) {
  if (images.empty()) throw InvalidArgument("BatchingCaptioner: no images to caption");
  const ImageTransform transform = state_->captioner->model().eval_transform();
  std::vector<at::Tensor> xs;
  xs.reserve(images.size());
  for (const Image& image : images) xs.push_back(transform(image));
  return submit(torch::stack(xs), options);
}

std::future<BatchResult> BatchingCaptioner::submit(const std::vector<Image>& images) {
  return submit(images, state_->captioner->options());
}

BatchResult BatchingCaptioner::caption(const std::vector<Image>& images,
                                       const CaptionOptions& options) {
  return submit(images, options).get();
}

BatchingStats BatchingCaptioner::stats() const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  BatchingStats s = state_->stats;
  s.queued_images = state_->queued_images;
  s.queued_requests = state_->queue.size();
  return s;
}

const Captioner& BatchingCaptioner::captioner() const { return *state_->captioner; }
const BatchingOptions& BatchingCaptioner::options() const { return state_->options; }

}  // namespace imcap
