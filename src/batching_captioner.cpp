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
  State(std::shared_ptr<const Captioner> c, BatchingOptions o)
      : captioner(std::move(c)), options(o), transform(captioner->model().eval_transform()) {}

  std::shared_ptr<const Captioner> captioner;
  BatchingOptions options;
  ImageTransform transform;  // the model's eval transform, run by the submitting threads
  mutable std::mutex mutex;
  std::condition_variable wake;
  std::deque<std::unique_ptr<Request>> queue;
  std::size_t queued_images = 0;
  bool closing = false;
  bool draining = false;  // batches start without waiting for company
  BatchingStats stats;
  std::thread worker;
  std::once_flag joined;

  // The queue positions of the next batch (the lock held): the oldest request and the ones
  // behind it with the same options, while they fit in max_batch images (the oldest always
  // does); and their images.
  std::pair<std::vector<std::size_t>, std::int64_t> candidates() const {
    std::vector<std::size_t> picked;
    std::int64_t images = 0;
    const CaptionOptions& leader = queue.front()->options;
    for (std::size_t i = 0; i < queue.size(); ++i) {
      const Request& r = *queue[i];
      if (!same_search(r.options, leader)) continue;
      if (images > 0 && images + r.images.size(0) > options.max_batch) break;
      images += r.images.size(0);
      picked.push_back(i);
    }
    return {std::move(picked), images};
  }

  // Takes the next batch from the queue (the lock held) when max_batch images are ready, the
  // oldest request has waited max_wait, or the captioner is draining or closing. Empty when the
  // queue is empty and the captioner closed.
  std::vector<std::unique_ptr<Request>> next_batch(std::unique_lock<std::mutex>& lock) {
    for (;;) {
      wake.wait(lock, [&] { return closing || !queue.empty(); });
      if (queue.empty()) return {};
      const auto deadline = queue.front()->arrived + options.max_wait;
      if (candidates().second >= options.max_batch || closing || draining ||
          Clock::now() >= deadline)
        break;
      wake.wait_until(lock, deadline);
    }
    const auto [picked, images] = candidates();
    std::vector<std::unique_ptr<Request>> batch;
    for (const std::size_t i : picked) batch.push_back(std::move(queue[i]));
    queue.erase(std::remove(queue.begin(), queue.end(), nullptr), queue.end());
    queued_images -= static_cast<std::size_t>(images);
    return batch;
  }

  void run(std::vector<std::unique_ptr<Request>>& batch) {
    const auto start = Clock::now();
    const CaptionOptions& options = batch.front()->options;
    std::vector<at::Tensor> parts;
    std::int64_t images = 0;
    for (const auto& r : batch) {
      parts.push_back(r->images);
      images += r->images.size(0);
    }
    std::vector<BatchResult> results(batch.size());
    try {
      const at::Tensor features = captioner->encode(torch::cat(parts), options);
      const auto encoded = Clock::now();
      auto captions = captioner->candidates(features, options);
      const auto searched = Clock::now();
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
      record(batch.size(), images);
      for (auto& r : batch) r->promise.set_exception(error);
      return;
    }
    record(batch.size(), images);
    for (std::size_t i = 0; i < batch.size(); ++i)
      batch[i]->promise.set_value(std::move(results[i]));
  }

  void record(std::size_t requests, std::int64_t images) {
    const std::lock_guard<std::mutex> lock(mutex);
    stats.requests += requests;
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
                                     BatchingOptions options) {
  if (!captioner) throw InvalidArgument("BatchingCaptioner: the captioner is null");
  if (options.max_batch < 1)
    throw InvalidArgument(
        fmt::format("BatchingOptions::max_batch must be >= 1, got {}", options.max_batch));
  if (options.max_queue < 1)
    throw InvalidArgument("BatchingOptions::max_queue must be >= 1, got 0");
  if (options.max_wait.count() < 0)
    throw InvalidArgument(
        fmt::format("BatchingOptions::max_wait must be >= 0, got {} us", options.max_wait.count()));
  state_ = std::make_unique<State>(std::move(captioner), options);
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
  std::vector<at::Tensor> xs;
  xs.reserve(images.size());
  for (const Image& image : images) xs.push_back(state_->transform(image));
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
