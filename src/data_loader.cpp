#include "imcap/data_loader.hpp"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/enum_names.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

// SplitMix64 finaliser: turns (seed, epoch, batch, image) into well-spread generator seeds.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0,
                          std::uint64_t c = 0) {
  return mix(mix(mix(mix(seed) ^ a) ^ b) ^ c);
}

}  // namespace

BatchMode parse_batch_mode(const std::string& name) { return detail::parse_enum<BatchMode>(name); }

std::string to_string(BatchMode mode) { return detail::enum_name(mode); }

void pad_captions(const std::vector<const std::vector<std::int64_t>*>& sequences,
                  std::int64_t pad_id, Batch& batch) {
  const auto b = static_cast<std::int64_t>(sequences.size());
  std::size_t longest = 0;
  for (const auto* s : sequences) longest = std::max(longest, s->size());
  const auto t = static_cast<std::int64_t>(longest);
  batch.captions = torch::full({b, t}, pad_id, torch::kInt64);
  batch.lengths = torch::empty({b}, torch::kInt64);
  batch.mask = torch::zeros({b, t}, torch::kBool);
  auto* caps = batch.captions.data_ptr<std::int64_t>();
  auto* lens = batch.lengths.data_ptr<std::int64_t>();
  auto* mask = batch.mask.data_ptr<bool>();
  for (std::int64_t i = 0; i < b; ++i) {
    const auto& s = *sequences[static_cast<std::size_t>(i)];
    std::copy(s.begin(), s.end(), caps + i * t);
    std::fill(mask + i * t, mask + i * t + static_cast<std::int64_t>(s.size()), true);
    lens[i] = static_cast<std::int64_t>(s.size());
  }
}

struct DataLoader::State {
  std::size_t epoch = 0;
  std::vector<std::vector<std::size_t>> plan;  // caption indices of each batch
  std::mutex mutex;
  std::condition_variable cv;
  std::size_t next_to_build = 0;
  std::size_t consumed = 0;
  bool stop = false;
  std::map<std::size_t, std::pair<Batch, std::exception_ptr>> ready;
  std::vector<std::thread> threads;

  void join() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    cv.notify_all();
    for (auto& t : threads) t.join();
    threads.clear();
    stop = false;
  }
};

DataLoader::DataLoader(const CocoDataset& dataset, DataLoaderOptions options)
    : dataset_(dataset), options_(options), state_(std::make_unique<State>()) {
  if (options_.batch_size == 0) throw InvalidArgument("data loader: batch_size must be at least 1");
  if (options_.workers < 0)
    throw InvalidArgument(fmt::format("data loader: workers = {} is negative", options_.workers));
  if (dataset_.size() == 0) throw InvalidArgument("data loader: the dataset has no captions");
  if (options_.pin_memory && !torch::cuda::is_available())
    throw InvalidArgument(
        "data loader: pin_memory needs CUDA, and this build of LibTorch or this machine has none");
  if (options_.prefetch == 0) options_.prefetch = 1;
  if (options_.shard_count == 0 || options_.shard_index >= options_.shard_count)
    throw InvalidArgument(fmt::format("data loader: shard {} of {} does not exist",
                                      options_.shard_index, options_.shard_count));
}

DataLoader::~DataLoader() { state_->join(); }

std::size_t DataLoader::batches_per_epoch() const { return batches_in_epoch(state_->epoch); }

std::size_t DataLoader::batches_in_epoch(std::size_t epoch) const {
  const std::size_t n = dataset_.size(), bs = options_.batch_size;
  if (options_.mode == BatchMode::kImageMajor) return make_plan(epoch).size();
  return options_.drop_last ? n / bs : (n + bs - 1) / bs;
}

void DataLoader::start_epoch(std::size_t epoch) {
  state_->join();
  State& s = *state_;
  s.epoch = epoch;
  s.plan = make_plan(epoch);
  s.ready.clear();
  s.next_to_build = 0;
  s.consumed = 0;
}

std::vector<std::vector<std::size_t>> DataLoader::make_plan(std::size_t epoch) const {
  std::vector<std::vector<std::size_t>> plan;
  std::mt19937_64 rng(derive_seed(options_.seed, epoch, 0x0a11));
  const std::size_t n = dataset_.size(), bs = options_.batch_size;
  switch (options_.mode) {
    case BatchMode::kPadded: {
      std::vector<std::size_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      if (options_.shuffle) std::shuffle(order.begin(), order.end(), rng);
      for (std::size_t i = 0; i < n; i += bs) {
        if (options_.drop_last && i + bs > n) break;
        plan.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(i),
                          order.begin() + static_cast<std::ptrdiff_t>(std::min(n, i + bs)));
      }
      break;
    }
    case BatchMode::kSameLength: {
      std::map<std::size_t, std::vector<std::size_t>> by_length;
      for (std::size_t i = 0; i < n; ++i) by_length[dataset_.caption_ids(i).size()].push_back(i);
      std::vector<std::size_t> lengths;
      std::vector<double> weights;
      for (const auto& [len, idx] : by_length) {
        lengths.push_back(len);
        weights.push_back(static_cast<double>(idx.size()));
      }
      std::discrete_distribution<std::size_t> pick_length(weights.begin(), weights.end());
      const std::size_t batches = options_.drop_last ? n / bs : (n + bs - 1) / bs;
      for (std::size_t b = 0; b < batches; ++b) {
        const auto& group = by_length[lengths[pick_length(rng)]];
        std::uniform_int_distribution<std::size_t> pick(0, group.size() - 1);
        std::vector<std::size_t> batch(bs);
        for (auto& i : batch) i = group[pick(rng)];
        plan.push_back(std::move(batch));
      }
      break;
    }
    case BatchMode::kImageMajor: {
      std::vector<std::int64_t> images = dataset_.image_ids();
      if (options_.shuffle) std::shuffle(images.begin(), images.end(), rng);
      std::vector<std::size_t> batch;
      for (const auto id : images) {
        const auto& caps = dataset_.captions_of_image(id);
        if (!batch.empty() && batch.size() + caps.size() > bs) {
          plan.push_back(std::move(batch));
          batch.clear();
        }
        batch.insert(batch.end(), caps.begin(), caps.end());
      }
      if (!batch.empty() && !(options_.drop_last && batch.size() < bs))
        plan.push_back(std::move(batch));
      break;
    }
  }
  return plan;
}

void DataLoader::skip(std::size_t n) {
  State& s = *state_;
  if (!s.threads.empty())
    throw InvalidArgument("data loader: skip() must be called before the first next() of an epoch");
  s.consumed = s.next_to_build = std::min(n, s.plan.size());
}

namespace {

// The part `shard` of `count` of a batch: contiguous, as equal in captions as possible; with
// whole images, cuts move to the nearest image boundary so that no image is decoded twice.
std::vector<std::size_t> shard_of(const CocoDataset& data, const std::vector<std::size_t>& batch,
                                  std::size_t shard, std::size_t count, bool whole_images) {
  if (count == 1) return batch;
  const std::size_t n = batch.size();
  auto cut = [&](std::size_t k) -> std::size_t {
    const std::size_t ideal = (n * k + count / 2) / count;
    if (!whole_images || ideal == 0 || ideal == n) return ideal;
    auto boundary = [&](std::size_t p) {
      return p == 0 || p == n || data.image_id_of(batch[p - 1]) != data.image_id_of(batch[p]);
    };
    for (std::size_t d = 0;; ++d) {
      if (ideal >= d && boundary(ideal - d)) return ideal - d;
      if (ideal + d <= n && boundary(ideal + d)) return ideal + d;
    }
  };
  const std::size_t begin = cut(shard), end = std::max(begin, cut(shard + 1));
  return {batch.begin() + static_cast<std::ptrdiff_t>(begin),
          batch.begin() + static_cast<std::ptrdiff_t>(end)};
}

Batch build_batch(const CocoDataset& data, const DataLoaderOptions& options, std::size_t epoch,
                  std::size_t index, const std::vector<std::size_t>& planned) {
  Batch batch;
  batch.index = index;
  batch.global_size = planned.size();
  const auto captions = shard_of(data, planned, options.shard_index, options.shard_count,
                                 options.mode == BatchMode::kImageMajor);
  batch.caption_indices = captions;
  std::unordered_map<std::int64_t, std::int64_t> row_of;
  std::vector<std::int64_t> rows;
  rows.reserve(captions.size());
  std::vector<const std::vector<std::int64_t>*> seqs;
  seqs.reserve(captions.size());
  for (const auto ci : captions) {
    const auto id = data.image_id_of(ci);
    const auto [it, inserted] =
        row_of.emplace(id, static_cast<std::int64_t>(batch.image_ids.size()));
    if (inserted) batch.image_ids.push_back(id);
    rows.push_back(it->second);
    seqs.push_back(&data.caption_ids(ci));
  }
  batch.image_index = torch::tensor(rows, torch::kInt64);
  const auto& vocab = data.vocabulary();
  pad_captions(seqs, vocab.pad_id().value_or(vocab.end_id()), batch);
  if (options.load_images && !batch.image_ids.empty()) {
    std::vector<torch::Tensor> images;
    images.reserve(batch.image_ids.size());
    std::vector<char> flipped(batch.image_ids.size(), 0);
    for (std::size_t u = 0; u < batch.image_ids.size(); ++u) {
      const auto id = batch.image_ids[u];
      std::mt19937_64 rng(
          derive_seed(options.seed, epoch, index + 1, static_cast<std::uint64_t>(id)));
      bool f = false;
      images.push_back(data.image(id, rng, &f));
      flipped[u] = f;
    }
    batch.images = torch::stack(images);
    // A mirrored image's captions say left for right (CocoDatasetOptions::flip_swap_words).
    auto tokens = batch.captions.accessor<std::int64_t, 2>();
    for (std::size_t r = 0; r < rows.size(); ++r) {
      if (flipped[static_cast<std::size_t>(rows[r])] == 0) continue;
      for (std::int64_t t = 0; t < tokens.size(1); ++t)
        tokens[static_cast<std::int64_t>(r)][t] =
            data.mirrored_token(tokens[static_cast<std::int64_t>(r)][t]);
    }
  }
  if (options.pin_memory) {
    for (auto* t : {&batch.images, &batch.image_index, &batch.captions, &batch.lengths}) {
      if (t->defined()) *t = t->pin_memory();
    }
  }
  return batch;
}

}  // namespace

std::optional<Batch> DataLoader::next() {
  State& s = *state_;
  if (s.consumed >= s.plan.size()) return std::nullopt;
  if (options_.workers == 0) {
    const std::size_t i = s.consumed++;
    return build_batch(dataset_, options_, s.epoch, i, s.plan[i]);
  }
  if (s.threads.empty()) {
    for (int w = 0; w < options_.workers; ++w) {
      s.threads.emplace_back([this] {
        State& st = *state_;
        for (;;) {
          std::size_t i = 0;
          {
            std::unique_lock<std::mutex> lock(st.mutex);
            st.cv.wait(lock, [&] {
              return st.stop || (st.next_to_build < st.plan.size() &&
                                 st.next_to_build < st.consumed + options_.prefetch);
            });
            if (st.stop) return;
            i = st.next_to_build++;
          }
          Batch batch;
          std::exception_ptr error;
          try {
            batch = build_batch(dataset_, options_, st.epoch, i, st.plan[i]);
          } catch (...) {
            error = std::current_exception();
          }
          {
            std::lock_guard<std::mutex> lock(st.mutex);
            st.ready.emplace(i, std::make_pair(std::move(batch), error));
          }
          st.cv.notify_all();
        }
      });
    }
  }
  std::unique_lock<std::mutex> lock(s.mutex);
  s.cv.wait(lock, [&] { return s.ready.count(s.consumed) != 0; });
  auto node = s.ready.extract(s.consumed);
  ++s.consumed;
  lock.unlock();
  s.cv.notify_all();
  if (node.mapped().second) std::rethrow_exception(node.mapped().second);
  return std::move(node.mapped().first);
}

}  // namespace imcap
