// imcap bench's attention figures (private to the CLI): the shapes of bench/attention_baseline.py,
// a PyTorch implementation of sgrvinod's DecoderWithAttention, measured on imcap's code paths.
#pragma once

#include <cstdint>

#include "cli/bench_support.hpp"
#include "imcap/decoder.hpp"

namespace imcap::cli::bench {

/// The decoder's sizes and the batches, as bench/attention_baseline.py takes them.
struct AttentionShape {
  std::int64_t vocab = 10000, embed = 512, hidden = 512, attention_dim = 512;
  std::int64_t encoder_dim = 2048, cells = 49;  // ResNet-152's 7 x 7 grid at 224 px
  int decode_batch = 128, train_batch = 128, caption_len = 14, max_steps = 20;
  std::uint64_t seed = 0;
};

/// Greedy decoding (the notebook's sample(): max_steps steps, batch 1 and decode_batch) and
/// the teacher-forced training step (loss with the attention penalty, backward, Adam) of an
/// AttentionDecoder; beside them the same greedy decoding by `show_tell` (Show and Tell at the
/// same hidden size and vocabulary) and the ratio of the two per step. Keys:
/// attention_greedy_ms.batch1/.batchN, show_tell_greedy_ms.batch1/.batchN,
/// attention_step_vs_show_tell, attention_train_step_ms.
Json measure_attention(const AttentionShape& shape, Reps greedy, Reps train,
                       const Decoder& show_tell);

}  // namespace imcap::cli::bench
