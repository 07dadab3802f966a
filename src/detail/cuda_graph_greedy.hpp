// Greedy decoding replayed from CUDA graphs: the seed notebook's sample() for a Decoder, with
// the whole max_length-step loop of each batch size captured once and then launched as one
// graph. Each decoding step is a dozen small kernels; on a GPU, launching them one by one costs
// more than running them.
//
//   imcap::CudaGraphGreedy greedy(model.decoder(), /*max_length=*/20);
//   torch::Tensor ids = greedy(features);  // features [B, E] on the GPU -> [B, 20] int64 (CPU)
//
// On the CPU, and in builds whose LibTorch has no CUDA, it runs the same loop eagerly.
// See docs/performance.md#gpu.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include <torch/types.h>

#include "imcap/decoder.hpp"

namespace imcap::detail {

/// The seed's sample() (imcap::greedy_ids) for a Decoder, from CUDA graphs on a GPU.
class CudaGraphGreedy {
 public:
  /// Whether this build can capture CUDA graphs (imcap compiled against a LibTorch with CUDA).
  static bool available();

  /// Decodes `max_length` tokens per image with `decoder` (shared, not copied). Throws
  /// InvalidArgument when max_length < 1.
  explicit CudaGraphGreedy(Decoder decoder, int max_length = 20);
  ~CudaGraphGreedy();
  CudaGraphGreedy(CudaGraphGreedy&&) noexcept;
  CudaGraphGreedy& operator=(CudaGraphGreedy&&) noexcept;

  /// features [B, E] (the encoder's output, on the decoder's device) -> ids [B, max_length]
  /// int64 on the CPU: the argmax of the scores at every step, with no stop at <end>, equal to
  /// greedy_ids(DecoderStepper(decoder), features, max_length).
  ///
  /// On a CUDA device, with the decoder in eval mode, the first call for a batch size captures
  /// the loop in a CUDA graph (after one eager warm-up run); later calls copy the features into
  /// the graph's input and replay it. A graph reads the decoder's weights where they lie, so
  /// in-place updates (an optimizer step) are seen; weights moved to new memory (`to()`,
  /// `set_data`, loading a state dict by assignment) get a new graph. Calls are serialized.
  /// With LibTorch 2.x a capture is thread-local: other threads may use CUDA meanwhile. LibTorch
  /// 1.13 captures in global mode, so there a capture fails (and decoding stays eager) if another
  /// thread makes a CUDA call that capture forbids, such as pinning memory, while it runs.
  /// Throws InvalidArgument for features of the wrong shape (before any capture).
  torch::Tensor operator()(const torch::Tensor& features) const;

  /// Graphs captured so far (0 on the CPU).
  std::size_t graphs_captured() const;
  /// Why a capture failed ("" when none did). After a failure every call runs the loop eagerly
  /// (the same ids), so a driver or LibTorch that cannot capture costs speed, not results.
  std::string capture_error() const;
  int max_length() const { return max_length_; }

 private:
  struct Impl;
  int max_length_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace imcap::detail
