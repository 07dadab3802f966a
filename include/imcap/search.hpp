// Caption search: greedy and beam search over any step-by-step decoder, batched over images.
//
//   imcap::DecoderStepper decoder(model.decoder());          // or any StepDecoder
//   imcap::SearchOptions opts;                                // beam 3, no <unk>
//   auto results = imcap::search(decoder, features, opts,     // features [B, E]
//                                imcap::SpecialTokens::of(vocab));
//   results[0][0].tokens;                                      // best caption of image 0 (ids)
//   vocab.decode(results[0][0].tokens);
//
// See docs/search.md for the algorithms, the scores and how batching works.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "imcap/step_decoder.hpp"
#include "imcap/vocabulary.hpp"

namespace imcap {

/// The vocabulary's special tokens, as the searches use them. -1 = the vocabulary has none.
struct SpecialTokens {
  /// Id of <start>: a generated first token equal to it is left out of Hypothesis::tokens
  /// (seed-style models predict <start> first), and <start> is never generated after the first
  /// step. (A model that gives real probability to both starting with <start> and not can then
  /// yield the same tokens twice, with different log_probs.)
  std::int64_t start = -1;
  /// Id of <end>: a caption ends when it generates it. With none, every caption runs to
  /// max_length.
  std::int64_t end = -1;
  /// Id of <unk>, for SearchOptions::forbid_unk.
  std::int64_t unk = -1;

  /// The three ids of `vocab`.
  static SpecialTokens of(const Vocabulary& vocab) {
    return SpecialTokens{vocab.start_id(), vocab.end_id(), vocab.unk_id()};
  }
};

/// How captions are searched: the options of greedy and beam search, which CaptionOptions
/// extends (imcap caption's --beam, --max-length, --alpha, --min-length, --num-return).
struct SearchOptions {
  /// Number of beams per image; 1 = greedy search. Default 3.
  int beam_size = 3;
  /// Most tokens generated per caption, counting a leading <start> and the <end>, as the seed's
  /// sample() does. Default 20.
  int max_length = 20;
  /// Length normalisation: score = log_prob / length^alpha (length = words, plus 1 for <end>).
  /// 0 ranks by the summed log-probability; larger values favour longer captions. Must be >= 0.
  /// Default 0.
  double alpha = 0.0;
  /// Never generate the <unk> token (when there is one: SpecialTokens::unk >= 0). Default true.
  bool forbid_unk = true;
  /// Fewest words before <end> may be generated. Default 0.
  int min_length = 0;
  /// Hypotheses returned per image, best first; at most beam_size. Default 1.
  int num_return = 1;
};

/// One caption found by a search.
struct Hypothesis {
  /// Generated ids without a leading <start> and without the final <end>.
  std::vector<std::int64_t> tokens;
  /// Sum of the log-probabilities of every generated token (a stripped <start> and the <end>
  /// included).
  double log_prob = 0.0;
  /// log_prob / length^alpha, what the hypotheses are ranked by (equal to log_prob for alpha 0).
  double score = 0.0;
  /// True when the caption ended with <end>; false when it was cut at max_length.
  bool finished = false;
};

/// Greedy or beam search, as options.beam_size says: beam_size 1 runs greedy_search (one
/// hypothesis per image), otherwise beam_search. features: [B, ...]; returns B lists.
/// Throws InvalidArgument on bad options, special ids outside the decoder's vocabulary, or a
/// decoder that returns inconsistent shapes.
std::vector<std::vector<Hypothesis>> search(const StepDecoder& decoder, const at::Tensor& features,
                                            const SearchOptions& options,
                                            const SpecialTokens& tokens = {});

/// Beam search with options.beam_size beams per image, all images' beams stepped together.
/// Returns, per image, options.num_return hypotheses sorted best first: finished ones (ending
/// with <end>) by score, then, if there are not enough of them, the best ones cut at
/// max_length. Fewer only when fewer distinct token sequences have a finite log-probability.
std::vector<std::vector<Hypothesis>> beam_search(const StepDecoder& decoder,
                                                 const at::Tensor& features,
                                                 const SearchOptions& options,
                                                 const SpecialTokens& tokens = {});

/// Greedy search: the most probable next token at each step, per image, until <end> or
/// max_length (honours forbid_unk and min_length; beam_size and num_return are ignored).
std::vector<Hypothesis> greedy_search(const StepDecoder& decoder, const at::Tensor& features,
                                      const SearchOptions& options,
                                      const SpecialTokens& tokens = {});

/// The seed notebook's sample(): greedy_search for exactly max_length steps, without stopping
/// at <end> or masking anything, as ids [B, max_length] int64 on the CPU, equal to PyTorch's
/// sample() for the same model. (A row whose scores are all NaN or -inf stops there; its
/// remaining ids are 0.)
at::Tensor greedy_ids(const StepDecoder& decoder, const at::Tensor& features, int max_length = 20);

/// Options of sample_captions.
struct SampleOptions {
  /// Captions drawn per image. Default 5.
  int samples = 5;
  /// Most tokens per caption, counting a leading <start> and the <end>. Default 20, as
  /// SearchOptions::max_length.
  int max_length = 20;
  /// The distribution is softmax(logits / temperature); > 0. Default 1.
  double temperature = 1.0;
  /// Draw only from the top_k most likely tokens of each step; 0 = from all. Default 0.
  int top_k = 0;
  /// Never draw <unk> (when there is one). Default true.
  bool forbid_unk = true;
};

/// Captions drawn from a decoder's distribution, `samples` per image, image-major: row
/// b * samples + j is sample j of image b.
struct SampledCaptions {
  /// [B * samples, L] int64 (L <= max_length): the drawn tokens, a leading <start> left out,
  /// each row's first <end> included, then end ids (or 0 without an <end>) as padding.
  at::Tensor tokens;
  /// [B * samples] int64: tokens per row up to and including the first <end> (all L when a row
  /// never drew one).
  at::Tensor lengths;
  /// [B * samples] float: the summed log-probability (at temperature 1) of each row's tokens
  /// up to and including its first <end>, a drawn leading <start> included. Differentiable with
  /// respect to the decoder's parameters when autograd is on (self-critical training).
  at::Tensor log_probs;
  /// [B * samples, S] int64: the tokens as they were drawn, one per step (a leading <start>
  /// kept, nothing cut after <end>), on the decoder's device; with `drawn_lengths` (the steps
  /// up to and including each row's first <end>), the captions that teacher-forcing the decoder
  /// scores as the sampling did (Decoder::weighted_loss).
  at::Tensor drawn;
  at::Tensor drawn_lengths;  ///< [B * samples] int64, on the decoder's device
};

/// Draws options.samples captions per image from decoder's next-token distributions, all rows
/// stepped together until every row has drawn <end> or max_length tokens. The draws come from
/// `generator` (a CPU generator gives the same captions for the same seed). Autograd follows
/// the caller's GradMode. <start> is never drawn after the first step. Throws InvalidArgument
/// for bad options.
SampledCaptions sample_captions(const StepDecoder& decoder, const at::Tensor& features,
                                const SampleOptions& options, const SpecialTokens& tokens,
                                at::Generator generator);

}  // namespace imcap
