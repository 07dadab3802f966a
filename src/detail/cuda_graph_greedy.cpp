#include "detail/cuda_graph_greedy.hpp"

#include <deque>
#include <mutex>
#include <string>
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
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {

namespace {

#if IMCAP_HAVE_CUDA_GRAPHS
// Graphs kept at once: each holds its own memory pool (the step's activations for its batch).
constexpr std::size_t kMaxGraphs = 8;
#endif

// The loop of greedy_ids with a DecoderStepper: no host synchronisation, so that it can be
// captured. The ids come from argmax over the scores, so they need no vocabulary check.
torch::Tensor greedy_loop(DecoderImpl& decoder, const torch::Tensor& features, int max_length) {
  DecoderStepOutput out = decoder.start(features);
  std::vector<torch::Tensor> ids;
  ids.reserve(static_cast<std::size_t>(max_length));
  for (int t = 0; t < max_length; ++t) {
    if (t > 0) out = decoder.step_embedded(decoder.embed(ids.back()), out.state);
    // max(1), not argmax: the notebooks' `outputs.max(1)[1]`, with the same tie-breaking.
    ids.push_back(std::get<1>(out.logits.max(/*dim=*/1)));
  }
  return torch::stack(ids, /*dim=*/1);
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
    torch::Tensor input, output;
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

CudaGraphGreedy::CudaGraphGreedy(Decoder decoder, int max_length)
    : max_length_(max_length), impl_(std::make_unique<Impl>()) {
  if (max_length < 1) {
    throw InvalidArgument(
        fmt::format("CudaGraphGreedy: max_length must be >= 1, got {}", max_length));
  }
  if (decoder.is_empty()) throw InvalidArgument("CudaGraphGreedy: the decoder is empty");
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

torch::Tensor CudaGraphGreedy::operator()(const torch::Tensor& features) const {
  DecoderImpl& decoder = *impl_->decoder;
  const int64_t embed = decoder.options().embed_size;
  detail::check_tensor(features.defined() && features.dim() == 2 && features.size(1) == embed &&
                           features.is_floating_point(),
                       "CudaGraphGreedy features",
                       fmt::format("float features of shape [B, {}]", embed), features);
  const int64_t batch = features.size(0);
  if (batch == 0) return torch::empty({0, max_length_}, torch::kInt64);
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
        greedy_loop(decoder, g.input, max_length_);
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
            g.output = greedy_loop(decoder, g.input, max_length_);
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
      if (!impl_->capture_error.empty()) {
        return greedy_loop(decoder, features, max_length_).to(torch::kCPU);
      }
      if (impl_->graphs.size() == kMaxGraphs) impl_->graphs.pop_front();
      impl_->graphs.push_back(std::move(g));
      ++impl_->captured;
      graph = &impl_->graphs.back();
    }
    graph->input.copy_(features);
    graph->graph->replay();
    // To the host inside the lock: the next call may overwrite the graph's input and output.
    return graph->output.to(torch::kCPU);
  }
#endif
  return greedy_loop(decoder, features, max_length_).to(torch::kCPU);
}

}  // namespace imcap::detail
