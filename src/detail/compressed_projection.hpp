// The decoder's output projection with its weights stored in 16 or 8 bits, for inference steps
// (internal; the public switch is imcap::DecodeWeights in decoder.hpp).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "imcap/decoder.hpp"

namespace imcap::detail {

/// Scores per row that compressed decode weights keep equal to float32's: the highest ones.
inline constexpr int64_t kExactDecodeScores = 8;
/// Most rows (images times beams) of a step that use compressed decode weights; a larger step
/// is a compute-bound matrix product that reads each weight once anyway, and runs in float32.
inline constexpr int64_t kMaxCompressedDecodeRows = 16;

/// x (B, k) W^T + b, without autograd, for CPU float32 tensors: W (V, k) contiguous, b (V) or
/// undefined, with imcap's own kernel: every score is summed in one fixed order whatever the
/// batch, the split between Torch's threads (rows of W in blocks) or the decode weights, so a
/// step's float32 scores equal those that compressed decode weights recompute. For the decoding
/// steps' products: OpenBLAS serializes calls from several threads at once, and its gemm would
/// pack all of W at every step.
torch::Tensor rowwise_affine(const torch::Tensor& x, const torch::Tensor& w,
                             const torch::Tensor& b);
/// Whether rowwise_affine takes these tensors.
bool rowwise_affine_supported(const torch::Tensor& x, const torch::Tensor& w,
                              const torch::Tensor& b);

/// y = x W^T + b for a few rows x, reading a compressed copy of W: bfloat16 (half the bytes) or
/// int8 with one scale per row (a quarter). A decoding step at batch 1 is bound by the bytes of
/// weights it reads, so this is what makes it faster.
///
/// Exactness: for every row j a bound E_j(x) on |compressed score - float32 score| is known
/// (the compression error's norm times |x|, plus float rounding of both products). The scores
/// whose upper bound reaches the kExactTop-th best lower bound of their row are recomputed from
/// the float32 weights, so each row's kExactTop highest scores, their order and their ids are
/// those of the float32 product (rowwise_affine's, bit for bit); every other score is within E_j
/// of it.
class CompressedProjection {
 public:
  /// Scores guaranteed exact per row: the searches mask at most three ids (<unk>, <start>
  /// after the first step, <end> under a minimum length), so greedy search's choice stays
  /// float32's, and so do beam search's candidates for beams up to 5.
  static constexpr int64_t kExactTop = kExactDecodeScores;
  /// Batches above this run the float32 product: a matrix product then is compute-bound and
  /// reads each weight once for all rows anyway.
  static constexpr int64_t kMaxRows = kMaxCompressedDecodeRows;

  /// A compressed copy of `weight` (V, K) float32 on the CPU, contiguous; `bias` (V) or
  /// undefined. Returns nullptr when the weights cannot be compressed within bounds (a
  /// non-finite or too large value): then the float32 product is used.
  static std::shared_ptr<const CompressedProjection> build(const torch::Tensor& weight,
                                                           const torch::Tensor& bias,
                                                           DecodeWeights type);

  /// Whether forward() handles x: CPU float32 (B, K) with 1 <= B <= kMaxRows.
  bool accepts(const torch::Tensor& x) const;
  /// x (B, K) -> (B, V), with the weights it was built from (their float32 values are read
  /// only for the recomputed scores).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& weight,
                        const torch::Tensor& bias) const;

  DecodeWeights type() const { return type_; }

 private:
  CompressedProjection() = default;
  // The compressed scores of rows [begin, end) for every row of x.
  void scores(const float* x, int64_t batch, int64_t begin, int64_t end, float* out) const;

  DecodeWeights type_ = DecodeWeights::kFloat32;
  int64_t rows_ = 0, cols_ = 0;
  std::vector<std::uint16_t> bf16_;  // (V, K) bfloat16 bits, kBFloat16
  std::vector<std::int8_t> int8_;    // (V, K), kInt8
  std::vector<float> scale_;         // (V), kInt8: W[j] ~ scale_[j] * int8_[j]
  std::vector<float> bias_;          // (V), zeros without a bias
  // E_j(x) = err_per_norm_[j] * |x|_2 + err_const_[j]
  std::vector<float> err_per_norm_, err_const_;
};

}  // namespace imcap::detail
