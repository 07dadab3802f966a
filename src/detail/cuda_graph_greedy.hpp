// Greedy search replayed from CUDA graphs: greedy_search for a Decoder, with the whole
// max_length-step loop of each batch size captured once and then launched as one graph. Each
// decoding step is a dozen small kernels; on a GPU, launching them one by one costs more than
// running them. The Captioner takes it for beam 1 on CUDA.
//
//   imcap::detail::CudaGraphGreedy greedy(model.decoder(), options, tokens);
//   std::vector<imcap::Hypothesis> best = greedy(features);  // features [B, E] on the GPU
//
// On the CPU, and in builds whose LibTorch has no CUDA, it runs the same loop eagerly.
// See docs/performance.md#gpu.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "imcap/decoder.hpp"
#include "imcap/search.hpp"

namespace imcap::detail {

/// greedy_search for a Decoder, from CUDA graphs on a GPU.
class CudaGraphGreedy {
 public:
  /// Whether this build can capture CUDA graphs (imcap compiled against a LibTorch with CUDA).
  static bool available();

  /// Greedy search with `options` (beam_size and num_return are ignored) and the special
  /// `tokens` over `decoder` (shared, not copied). Throws InvalidArgument for bad options.
  CudaGraphGreedy(Decoder decoder, const SearchOptions& options, const SpecialTokens& tokens);
  ~CudaGraphGreedy();
  CudaGraphGreedy(CudaGraphGreedy&&) noexcept;
  CudaGraphGreedy& operator=(CudaGraphGreedy&&) noexcept;

  /// features [B, E] (the encoder's output, on the decoder's device) -> one hypothesis per
  /// image, equal to greedy_search(DecoderStepper(decoder), features, options, tokens). Every
  /// row runs max_length steps (no row stops early, so no step waits for the host); the
  /// hypotheses are cut at each row's <end> afterwards.
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
  std::vector<Hypothesis> operator()(const torch::Tensor& features) const;

  /// Graphs captured so far (0 on the CPU).
  std::size_t graphs_captured() const;
  /// Why a capture failed ("" when none did). After a failure every call runs the loop eagerly
  /// (the same ids), so a driver or LibTorch that cannot capture costs speed, not results.
  std::string capture_error() const;
  const SearchOptions& options() const { return options_; }

 private:
  struct Impl;
  SearchOptions options_;
  SpecialTokens tokens_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace imcap::detail
