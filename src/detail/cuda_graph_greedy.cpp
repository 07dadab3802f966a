#include "detail/cuda_graph_greedy.hpp"

#include <cmath>
#include <deque>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#if IMCAP_HAVE_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "detail/cuda_info.hpp"
#include "detail/hypothesis.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {

namespace {

#if IMCAP_HAVE_CUDA_GRAPHS
// Graphs kept at once: each holds its own memory pool (the step's activations for its batch).
constexpr std::size_t kMaxGraphs = 8;
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The steps of greedy_search over a Decoder without host synchronisation, so that they can be
// captured: every row runs max_length steps, with the search's masks as tensor operations.
// Returns the chosen ids [B, max_length] (int64) and their log-probabilities [B, max_length]
// (float), on the decoder's device. The ids come from argmax over the scores, so they need no
// vocabulary check.
std::pair<torch::Tensor, torch::Tensor> greedy_loop(DecoderImpl& decoder,
                                                    const torch::Tensor& features,
                                                    const SearchOptions& o,
                                                    const SpecialTokens& tokens) {
  StepStart out = decoder.start(features);
  torch::Tensor scores = std::move(out.scores);
  std::vector<torch::Tensor> ids, logps;
  ids.reserve(static_cast<std::size_t>(o.max_length));
  logps.reserve(static_cast<std::size_t>(o.max_length));
  torch::Tensor started;  // [B] int64: 1 where the first token is <start>
  for (int t = 0; t < o.max_length; ++t) {
    if (t > 0) scores = decoder.step_embedded(decoder.embed(ids.back()), out.state);
    torch::Tensor logp = torch::log_softmax(scores, /*dim=*/1, torch::kFloat);
    if (o.forbid_unk && tokens.unk >= 0) logp.select(1, tokens.unk).fill_(kNegInf);
    if (t > 0 && tokens.start >= 0) logp.select(1, tokens.start).fill_(kNegInf);
    if (tokens.end >= 0 && o.min_length > 0) {
      // A live row has t tokens; a leading <start> is not a word.
      if (t == 0) {
        logp.select(1, tokens.end).fill_(kNegInf);
      } else {
        const torch::Tensor words = started.defined() ? t - started : torch::full_like(ids[0], t);
        logp.select(1, tokens.end).masked_fill_(words.lt(o.min_length), kNegInf);
      }
    }
    auto [best_logp, best_id] = logp.max(/*dim=*/1);
    if (t == 0 && tokens.start >= 0) started = best_id.eq(tokens.start).to(torch::kLong);
    ids.push_back(best_id);
    logps.push_back(best_logp);
  }
  return {torch::stack(ids, /*dim=*/1), torch::stack(logps, /*dim=*/1)};
}

// greedy_search's bookkeeping on the loop's output (on the CPU): each row stops at its first
// <end>, at a token with no finite log-probability, or at max_length.
std::vector<Hypothesis> hypotheses(const torch::Tensor& ids, const torch::Tensor& logps,
                                   const SearchOptions& o, const SpecialTokens& tokens) {
  const auto id = ids.accessor<int64_t, 2>();
  const auto lp = logps.accessor<float, 2>();
  std::vector<Hypothesis> out(static_cast<std::size_t>(ids.size(0)));
  for (int64_t b = 0; b < ids.size(0); ++b) {
    std::vector<int64_t> generated;
    double log_prob = 0.0;
    bool finished = false;
    for (int64_t t = 0; t < ids.size(1); ++t) {
      if (!std::isfinite(lp[b][t])) break;
      log_prob += lp[b][t];
      if (id[b][t] == tokens.end) {
        finished = true;
        break;
      }
      generated.push_back(id[b][t]);
    }
    out[static_cast<std::size_t>(b)] = make_hypothesis(generated, log_prob, finished, o, tokens);
  }
  return out;
}

}  // namespace

struct CudaGraphGreedy::Impl {
  Decoder decoder{nullptr};
  mutable std::mutex mutex;
#if IMCAP_HAVE_CUDA_GRAPHS
  struct Graph {
    int64_t batch = 0;
    torch::Dtype dtype = torch::kFloat;
    c10::DeviceIndex device = 0;
    std::vector<const void*> data;       // where the weights lay at capture
    std::vector<torch::Tensor> weights;  // keeps that memory alive while the graph may read it
    torch::Tensor input, ids, logps;
    std::unique_ptr<at::cuda::CUDAGraph> graph;
  };
  std::deque<Graph> graphs;  // most recently captured last
#endif
  std::size_t captured = 0;
  std::string capture_error;  // why the last capture failed; later calls then run eagerly
};

std::string cuda_device_name(int index) {
#if IMCAP_HAVE_CUDA_GRAPHS
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, index) == cudaSuccess) return properties.name;
  cudaGetLastError();  // a failed runtime call stays pending until read: leave none for ATen
#else
  static_cast<void>(index);
#endif
  return {};
}

bool CudaGraphGreedy::available() {
#if IMCAP_HAVE_CUDA_GRAPHS
  return true;
#else
  return false;
#endif
}

CudaGraphGreedy::CudaGraphGreedy(Decoder decoder, const SearchOptions& options,
                                 const SpecialTokens& tokens)
    : options_(options), tokens_(tokens), impl_(std::make_unique<Impl>()) {
  options_.beam_size = 1;
  options_.num_return = 1;
  check_search_options(options_, "CudaGraphGreedy");
  if (decoder.is_empty()) throw InvalidArgument("CudaGraphGreedy: the decoder is empty");
  check_special_tokens(tokens, decoder->options().vocab_size, "CudaGraphGreedy");
  impl_->decoder = std::move(decoder);
}

CudaGraphGreedy::~CudaGraphGreedy() = default;
CudaGraphGreedy::CudaGraphGreedy(CudaGraphGreedy&&) noexcept = default;
CudaGraphGreedy& CudaGraphGreedy::operator=(CudaGraphGreedy&&) noexcept = default;

std::size_t CudaGraphGreedy::graphs_captured() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->captured;
}

std::string CudaGraphGreedy::capture_error() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->capture_error;
}

std::vector<Hypothesis> CudaGraphGreedy::operator()(const torch::Tensor& features) const {
  DecoderImpl& decoder = *impl_->decoder;
  const int64_t embed = decoder.options().embed_size;
  detail::check_tensor(features.defined() && features.dim() == 2 && features.size(1) == embed &&
                           features.is_floating_point(),
                       "CudaGraphGreedy features",
                       fmt::format("float features of shape [B, {}]", embed), features);
  const int64_t batch = features.size(0);
  if (batch == 0) return {};
  auto eager = [&] {
    const auto [ids, logps] = greedy_loop(decoder, features, options_, tokens_);
    return hypotheses(ids.cpu(), logps.cpu(), options_, tokens_);
  };
  torch::NoGradGuard no_grad;
  std::lock_guard<std::mutex> lock(impl_->mutex);
#if IMCAP_HAVE_CUDA_GRAPHS
  if (features.is_cuda() && !decoder.is_training() && impl_->capture_error.empty()) {
    const c10::cuda::CUDAGuard device_guard(features.device());
    std::vector<torch::Tensor> weights = decoder.parameters();
    std::vector<const void*> data;
    data.reserve(weights.size());
    for (const auto& w : weights) data.push_back(w.data_ptr());
    Impl::Graph* graph = nullptr;
    for (auto& g : impl_->graphs) {
      if (g.batch == batch && g.dtype == features.scalar_type() &&
          g.device == features.device().index() && g.data == data) {
        graph = &g;
      }
    }
    if (graph == nullptr) {
      Impl::Graph g;
      g.batch = batch;
      g.dtype = features.scalar_type();
      g.device = features.device().index();
      g.data = std::move(data);
      g.weights = std::move(weights);
      g.input = features.contiguous().clone();
      // Capture runs on a side stream, after everything queued so far.
      c10::cuda::getCurrentCUDAStream().synchronize();
      const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
      {
        const c10::cuda::CUDAStreamGuard stream_guard(side);
        // The warm-up creates cuBLAS's handle and workspace (which capture must not allocate)
        // and raises any shape error before capture begins.
        greedy_loop(decoder, g.input, options_, tokens_);
        side.synchronize();
        g.graph = std::make_unique<at::cuda::CUDAGraph>();
#if TORCH_VERSION_MAJOR >= 2
        // A pool of our own, so that a failed capture can hand it back (see the catch below).
        const auto pool = at::cuda::graph_pool_handle();
#endif
        try {
#if TORCH_VERSION_MAJOR >= 2
          // Thread-local: another thread's cudaMalloc (a data loader pinning memory, say) must
          // not invalidate this capture.
          g.graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
#else
          g.graph->capture_begin();
#endif
          try {
            std::tie(g.ids, g.logps) = greedy_loop(decoder, g.input, options_, tokens_);
          } catch (...) {
            try {
              g.graph->capture_end();
            } catch (...) {
            }
            throw;
          }
          g.graph->capture_end();
          side.synchronize();
        } catch (const std::exception& e) {
          // The eager loop worked (the warm-up): decode without graphs from now on.
          impl_->capture_error = e.what();
          // Never leave the side stream capturing (capture_begin can throw after
          // cudaStreamBeginCapture).
          cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
          if (cudaStreamIsCapturing(side.stream(), &status) == cudaSuccess &&
              status != cudaStreamCaptureStatusNone) {
            cudaGraph_t partial = nullptr;
            if (cudaStreamEndCapture(side.stream(), &partial) == cudaSuccess && partial)
              cudaGraphDestroy(partial);
          }
#if TORCH_VERSION_MAJOR >= 2
          // LibTorch 2.x's capture_end() throws on a failed cudaStreamEndCapture before it
          // calls endAllocateToPool(), and reset() does not call it either: the allocators keep
          // a stream filter that captures the CUDAGraph's `this`. Destroying the graph would
          // leave it dangling (used on every later allocation on this device), so the object
          // is leaked on purpose (once: no capture is tried after a failure), and the device
          // allocator's pool routing is ended here.
          static_cast<void>(g.graph.release());
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 3
          try {
            c10::cuda::CUDACachingAllocator::endAllocateToPool(g.device, pool);
          } catch (...) {  // capture_end() got that far, or capture_begin() not that far
          }
          try {
            c10::cuda::CUDACachingAllocator::releasePool(g.device, pool);
          } catch (...) {  // capture_begin() failed before creating the pool
          }
#endif
#endif
          cudaGetLastError();
        }
      }
      if (!impl_->capture_error.empty()) return eager();
      if (impl_->graphs.size() == kMaxGraphs) impl_->graphs.pop_front();
      impl_->graphs.push_back(std::move(g));
      ++impl_->captured;
      graph = &impl_->graphs.back();
    }
    graph->input.copy_(features);
    graph->graph->replay();
    // To the host inside the lock: the next call may overwrite the graph's input and output.
    return hypotheses(graph->ids.cpu(), graph->logps.cpu(), options_, tokens_);
  }
#endif
  return eager();
}

}  // namespace imcap::detail
