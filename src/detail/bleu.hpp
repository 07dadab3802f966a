// BLEU from n-gram statistics, as coco-caption's bleu_scorer.py combines them (internal): used by
// the evaluation (metrics.cpp) and by self-critical training's sentence BLEU-4 reward.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace imcap::detail {

constexpr int kBleuOrders = 4;       // BLEU-1..4
constexpr double kBleuTiny = 1e-15;  // bleu_scorer.py's "tiny" (numerators)
constexpr double kBleuSmall = 1e-9;  // bleu_scorer.py's "small" (denominators)

/// BLEU-1..4 from a candidate length, the effective reference length ("closest"), and per order
/// the candidate's n-grams (`guess`) and those matched with clipping (`correct`):
/// BleuScorer.compute_score(option="closest") for summed (corpus) or one image's statistics.
inline std::array<double, kBleuOrders> bleu_from_counts(
    std::int64_t test_length, std::int64_t ref_length,
    const std::array<std::int64_t, kBleuOrders>& guess,
    const std::array<std::int64_t, kBleuOrders>& correct) {
  std::array<double, kBleuOrders> bleu{};
  const double ratio = (static_cast<double>(test_length) + kBleuTiny) /
                       (static_cast<double>(ref_length) + kBleuSmall);
  for (int n = 1; n <= kBleuOrders; ++n) {
    double b = 1.0;
    for (int k = 0; k < n; ++k)
      b *= (static_cast<double>(correct[k]) + kBleuTiny) /
           (static_cast<double>(guess[k]) + kBleuSmall);
    b = std::pow(b, 1.0 / n);
    if (ratio < 1.0) b *= std::exp(1.0 - 1.0 / ratio);
    bleu[n - 1] = b;
  }
  return bleu;
}

}  // namespace imcap::detail
