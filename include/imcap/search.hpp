// Caption search: greedy and beam search over any step-by-step decoder, batched over images.
//
//   class MyDecoder : public imcap::StepDecoder { ... };      // wraps a trained model
//   imcap::SearchOptions opts = imcap::SearchOptions::for_vocabulary(vocab);
//   opts.beam_size = 3;
//   auto results = imcap::search(decoder, features, opts);    // features [B, E]
//   results[0][0].tokens;                                      // best caption of image 0 (ids)
//   vocab.decode(results[0][0].tokens);
//
// See docs/search.md for the algorithms, the scores and how batching works.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "imcap/vocabulary.hpp"

namespace imcap {

/// The recurrent state of a StepDecoder for N rows (a row is one image in greedy search, one
/// beam of one image in beam search). Each tensor keeps its rows along its own dimension,
/// e.g. LSTM h and c of shape [layers, N, H] use row_dim 1, per-image attention memory
/// [N, P, D] uses row_dim 0. The search reorders, duplicates and drops rows with
/// select_rows(); the decoder never needs to know which row is which.
struct SearchState {
  /// The decoder's tensors (h, c, memory ...), in an order of the decoder's choosing.
  std::vector<at::Tensor> tensors;
  /// For each tensor, the dimension that indexes rows.
  std::vector<std::int64_t> row_dims;

  /// Appends a tensor whose rows lie along `row_dim`.
  void add(at::Tensor tensor, std::int64_t row_dim) {
    tensors.push_back(std::move(tensor));
    row_dims.push_back(row_dim);
  }
  /// Replaces every tensor t by t.index_select(row_dim, rows): row i of the result is row
  /// rows[i] of the input (rows: int64, on the state's device). Throws InvalidArgument when
  /// tensors and row_dims disagree or a row_dim is out of range.
  void select_rows(const at::Tensor& rows);
  /// Number of rows (the size of the first tensor along its row_dim; 0 when there is none).
  /// Throws InvalidArgument when the tensors disagree.
  std::int64_t num_rows() const;
};

/// What StepDecoder::start returns: the first step's scores and the state after it.
struct StepStart {
  /// [B, V] log-probabilities (or logits: the search applies log_softmax, which leaves
  /// log-probabilities unchanged) of the first generated token.
  at::Tensor scores;
  /// The state after the first step, B rows.
  SearchState state;
};

/// A decoder the search can drive one token at a time. Implementations wrap a model; they must
/// not keep per-call mutable state, so one instance can serve searches in several threads at
/// once (the search owns the state and passes it in).
///
/// Two families of models fit: Show-and-Tell as in the seed notebook (the image feature is the
/// LSTM input at step 0, and the first predicted token is usually <start>, which the search
/// strips, see SearchOptions::start_id), and models whose step 0 consumes <start> after being
/// conditioned on the image. start() hides the difference.
class StepDecoder {
 public:
  virtual ~StepDecoder() = default;
  /// First step from image features whose dim 0 is the batch ([B, E], or [B, P, D] for
  /// attention models): scores of the first token for each image, and the state.
  virtual StepStart start(const at::Tensor& features) const = 0;
  /// Next step: the last tokens [N] (int64, on the model's device) and the state of those N
  /// rows; returns the scores [N, V] of the next token (log-probabilities or logits) and
  /// replaces `state` by the state after this step.
  virtual at::Tensor step(const at::Tensor& tokens, SearchState& state) const = 0;
};

/// Options of greedy and beam search.
struct SearchOptions {
  /// Number of beams per image; 1 = greedy search in search(). Default 1.
  int beam_size = 1;
  /// Most tokens generated per caption, counting a leading <start> and the <end>, as the seed's
  /// sample() does. Default 20.
  int max_length = 20;
  /// Length normalisation: score = log_prob / length^alpha (length = words, plus 1 for <end>).
  /// 0 ranks by the summed log-probability; larger values favour longer captions. Must be >= 0.
  /// Default 0.
  double alpha = 0.0;
  /// Never generate the <unk> token (needs unk_id). Default false.
  bool forbid_unk = false;
  /// Fewest words before <end> may be generated. Default 0.
  int min_length = 0;
  /// Hypotheses returned per image, best first; at most beam_size. Default 1.
  int num_return = 1;
  /// Id of <end>; a hypothesis ends when it generates it. -1 = none: every hypothesis runs to
  /// max_length. Default -1 (use for_vocabulary()).
  std::int64_t end_id = -1;
  /// Id of <unk>, used by forbid_unk. -1 = none. Default -1.
  std::int64_t unk_id = -1;
  /// Id of <start>: a generated first token equal to it is left out of Hypothesis::tokens
  /// (seed-style models predict <start> first), and <start> is never generated after the first
  /// step. -1 = none. Default -1. (A model that gives real probability to both starting with
  /// <start> and not can then yield the same tokens twice, with different log_probs.)
  std::int64_t start_id = -1;

  /// Defaults with the special ids taken from the vocabulary.
  static SearchOptions for_vocabulary(const Vocabulary& vocab) {
    SearchOptions options;
    options.end_id = vocab.end_id();
    options.unk_id = vocab.unk_id();
    options.start_id = vocab.start_id();
    return options;
  }
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
/// Throws InvalidArgument on bad options or a decoder that returns inconsistent shapes.
std::vector<std::vector<Hypothesis>> search(const StepDecoder& decoder, const at::Tensor& features,
                                            const SearchOptions& options);

/// Beam search with options.beam_size beams per image, all images' beams stepped together.
/// Returns, per image, options.num_return hypotheses sorted best first: finished ones (ending
/// with <end>) by score, then, if there are not enough of them, the best ones cut at
/// max_length. Fewer only when fewer distinct token sequences have a finite log-probability.
std::vector<std::vector<Hypothesis>> beam_search(const StepDecoder& decoder,
                                                 const at::Tensor& features,
                                                 const SearchOptions& options);

/// Greedy search: the most probable next token at each step, per image, until <end> or
/// max_length (honours forbid_unk and min_length; beam_size and num_return are ignored).
std::vector<Hypothesis> greedy_search(const StepDecoder& decoder, const at::Tensor& features,
                                      const SearchOptions& options);

/// The seed notebook's sample(): argmax of the decoder's raw scores for exactly max_length steps,
/// without stopping at <end> or masking anything. Returns [B, max_length] int64 ids on the
/// CPU, equal to PyTorch's sample() for the same model.
at::Tensor greedy_ids(const StepDecoder& decoder, const at::Tensor& features, int max_length = 20);

}  // namespace imcap
