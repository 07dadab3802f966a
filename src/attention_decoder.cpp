#include "imcap/attention_decoder.hpp"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/attention_sequence.hpp"
#include "detail/attention_step.hpp"
#include "detail/decode_step.hpp"
#include "detail/lstm_sequence.hpp"
#include "detail/projected_cross_entropy.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/decoder.hpp"
#include "imcap/error.hpp"

namespace imcap {
namespace {

namespace nn = torch::nn;

using detail::kIgnoreIndex;

// Where the decoder's tensors lie in its DecodeState; kMeanGates under mean_feature only.
constexpr std::size_t kH = 0, kC = 1, kGrid = 2, kGridAtt = 3, kAlpha = 4, kMeanGates = 5;
constexpr std::size_t kStateSize = 5;

// cell(x, (h, c)), with `extra` (N, 4H) added to the gates where defined (LSTMCell takes no
// per-row term).
std::tuple<torch::Tensor, torch::Tensor> lstm_step(nn::LSTMCell& cell, const torch::Tensor& x,
                                                   const torch::Tensor& h, const torch::Tensor& c,
                                                   const torch::Tensor& extra) {
  if (!extra.defined()) return cell(x, std::make_tuple(h, c));
  return detail::lstm_from_gates(torch::addmm(cell->bias_ih, x, cell->weight_ih.t()) +
                                     torch::addmm(cell->bias_hh, h, cell->weight_hh.t()) + extra,
                                 c);
}

// The mean feature's share of the gates in `state` (undefined without mean_feature).
torch::Tensor mean_gates_of(const DecodeState& state, bool mean_feature) {
  return mean_feature ? state.tensors[kMeanGates] : torch::Tensor();
}

void check_positive(const char* name, int64_t value) {
  if (value <= 0) {
    throw InvalidArgument(
        fmt::format("attention decoder {}: expected a positive size, got {}", name, value));
  }
}

}  // namespace

AttentionImpl::AttentionImpl(int64_t encoder_dim, int64_t hidden_size, int64_t attention_dim) {
  encoder_att = register_module("encoder_att", nn::Linear(encoder_dim, attention_dim));
  decoder_att = register_module("decoder_att", nn::Linear(hidden_size, attention_dim));
  full_att = register_module("full_att", nn::Linear(attention_dim, 1));
}

std::pair<torch::Tensor, torch::Tensor> AttentionImpl::forward(const torch::Tensor& grid,
                                                               const torch::Tensor& hidden) {
  return attend(grid, encoder_att(grid), hidden);
}

std::pair<torch::Tensor, torch::Tensor> AttentionImpl::attend(const torch::Tensor& grid,
                                                              const torch::Tensor& grid_att,
                                                              const torch::Tensor& hidden) {
  const torch::Tensor e =
      full_att(torch::relu(grid_att + decoder_att(hidden).unsqueeze(1))).squeeze(2);  // (B, P)
  torch::Tensor alpha = torch::softmax(e, /*dim=*/1);
  torch::Tensor attended = torch::bmm(alpha.unsqueeze(1), grid).squeeze(1);  // (B, C)
  return {std::move(attended), std::move(alpha)};
}

AttentionDecoderImpl::AttentionDecoderImpl(const AttentionDecoderOptions& options)
    : options_(options),
      loss_buffer_(std::make_shared<detail::LossBuffer>()),
      inference_step_(std::make_shared<detail::AttentionStep>()) {
  check_positive("vocab_size", options.vocab_size);
  check_positive("encoder_dim", options.encoder_dim);
  check_positive("embed_size", options.embed_size);
  check_positive("hidden_size", options.hidden_size);
  check_positive("attention_dim", options.attention_dim);
  if (!(options.dropout >= 0.0 && options.dropout < 1.0)) {
    throw InvalidArgument(fmt::format(
        "attention decoder dropout: expected a value in [0, 1), got {}", options.dropout));
  }
  if (!(options.attention_reg >= 0.0 && std::isfinite(options.attention_reg))) {
    throw InvalidArgument(
        fmt::format("attention decoder attention_reg: expected a finite value >= 0, got {}",
                    options.attention_reg));
  }
  if (options.start_id < 0 || options.start_id >= options.vocab_size) {
    throw InvalidArgument(
        fmt::format("attention decoder start_id: expected an id in [0, {}), got {}",
                    options.vocab_size, options.start_id));
  }
  const int64_t c = grid_channels(), h = options.hidden_size;
  attention = register_module("attention", Attention(c, h, options.attention_dim));
  embedding = register_module("embedding", nn::Embedding(options.vocab_size, options.embed_size));
  dropout = register_module("dropout", nn::Dropout(options.dropout));
  decode_step = register_module("decode_step", nn::LSTMCell(options.embed_size + c, h));
  init_h = register_module("init_h", nn::Linear(c, h));
  init_c = register_module("init_c", nn::Linear(c, h));
  f_beta = register_module("f_beta", nn::Linear(h, c));
  fc = register_module("fc", nn::Linear(h, options.vocab_size));
  if (options.mean_feature) mean_gates = register_module("mean_gates", nn::Linear(c, 4 * h));
  // sgrvinod's init_weights: the embedding and fc uniform in [-0.1, 0.1], fc's bias zero.
  torch::NoGradGuard no_grad;
  embedding->weight.uniform_(-0.1, 0.1);
  fc->weight.uniform_(-0.1, 0.1);
  fc->bias.zero_();
}

void AttentionDecoderImpl::check_grid(const torch::Tensor& grid) const {
  detail::check_tensor(grid.defined() && grid.dim() == 3 && grid.size(1) >= 1 &&
                           grid.size(2) == options_.encoder_dim && grid.is_floating_point(),
                       "attention decoder grid",
                       fmt::format("float features (B, P, {})", options_.encoder_dim), grid);
}

int64_t AttentionDecoderImpl::grid_channels() const {
  return options_.encoder_dim + (options_.grid_positions ? 2 : 0);
}

torch::Tensor AttentionDecoderImpl::with_positions(const torch::Tensor& grid) const {
  if (!options_.grid_positions) return grid;
  const int64_t cells = grid.size(1);
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(cells))));
  if (side * side != cells)
    throw InvalidArgument(fmt::format(
        "attention decoder grid: grid_positions needs a square map of S x S positions, got "
        "P = {}",
        cells));
  // Position p = i * S + j of the flattened map is row i (y) and column j (x).
  const torch::Tensor axis =
      side == 1 ? torch::zeros({1}) : torch::linspace(-1.0, 1.0, side, torch::kFloat);
  const torch::Tensor xy = torch::stack({axis.view({1, side}).expand({side, side}),
                                         axis.view({side, 1}).expand({side, side})},
                                        /*dim=*/2)
                               .reshape({1, cells, 2})
                               .to(grid.options().requires_grad(false));
  return torch::cat({grid, xy.expand({grid.size(0), cells, 2})}, /*dim=*/2);
}

std::pair<torch::Tensor, torch::Tensor> AttentionDecoderImpl::hidden_states(
    const torch::Tensor& grid, const torch::Tensor& captions, const torch::Tensor& lengths) {
  check_grid(grid);
  const int64_t batch = grid.size(0);
  detail::check_tensor(captions.defined() && captions.dim() == 2 && captions.size(0) == batch &&
                           captions.size(1) >= 2 && captions.scalar_type() == torch::kLong,
                       "attention decoder captions",
                       fmt::format("int64 ids of shape [{}, T >= 2]", batch), captions);
  const int64_t steps = captions.size(1) - 1;
  torch::Tensor ids = captions.slice(/*dim=*/1, 0, steps);
  if (lengths.defined()) {
    detail::check_lengths(lengths, batch, steps + 1, /*min_len=*/2);
    // Padding may hold anything (even ids outside the vocabulary): embed id 0 there instead.
    ids = ids.masked_fill(~length_mask(lengths - 1, steps), 0);
  }
  detail::check_ids(ids, options_.vocab_size, "attention decoder captions");
  const torch::Tensor words = embedding(ids);  // (B, T - 1, E)
  DecodeState state = init_state(grid);
  torch::Tensor h = state.tensors[kH], c = state.tensors[kC];
  const torch::Tensor& grid_att = state.tensors[kGridAtt];
  const torch::Tensor& grid_in = state.tensors[kGrid];  // with its positions, if asked for
  const torch::Tensor mean_in = mean_gates_of(state, options_.mean_feature);
  const detail::AttentionSequenceWeights w = recurrence_weights();
  if (detail::attention_sequence_supported(grid_in, words, w, mean_in))
    return detail::attention_sequence(grid_in, grid_att, words, h, c, w, mean_in);
  // Elsewhere (a GPU, other types), the loop of sgrvinod's forward.
  std::vector<torch::Tensor> hs, alphas;
  hs.reserve(steps);
  alphas.reserve(steps);
  for (int64_t t = 0; t < steps; ++t) {
    auto [attended, alpha] = attention->attend(grid_in, grid_att, h);
    const torch::Tensor gate = torch::sigmoid(f_beta(h));
    std::tie(h, c) = lstm_step(
        decode_step, torch::cat({words.select(1, t), gate * attended}, /*dim=*/1), h, c, mean_in);
    hs.push_back(h);
    alphas.push_back(std::move(alpha));
  }
  return {torch::stack(hs, /*dim=*/1), torch::stack(alphas, /*dim=*/1)};
}

AttentionOutput AttentionDecoderImpl::forward(const torch::Tensor& grid,
                                              const torch::Tensor& captions,
                                              const torch::Tensor& lengths) {
  auto [hidden, alphas] = hidden_states(grid, captions, lengths);
  return {fc(dropout(hidden)), std::move(alphas)};
}

torch::Tensor AttentionDecoderImpl::targets(const torch::Tensor& captions,
                                            const torch::Tensor& lengths) const {
  const int64_t steps = captions.size(1) - 1;
  torch::Tensor t = captions.slice(/*dim=*/1, 1, steps + 1);
  if (lengths.defined()) t = t.masked_fill(~length_mask(lengths - 1, steps), kIgnoreIndex);
  return t.reshape({-1});
}

torch::Tensor AttentionDecoderImpl::projected(const torch::Tensor& hidden,
                                              const torch::Tensor& targets,
                                              const torch::Tensor& row_weights) {
  const torch::Tensor h = dropout(hidden).reshape({-1, options_.hidden_size});
  return detail::projected_cross_entropy(
      h, fc->weight, fc->bias, targets,
      loss_buffer_->get(h.size(0), options_.vocab_size, h.options()),
      row_weights.defined() ? row_weights.to(h.device()) : row_weights);
}

torch::Tensor AttentionDecoderImpl::loss(const torch::Tensor& grid, const torch::Tensor& captions,
                                         const torch::Tensor& lengths, double penalty_scale) {
  auto [hidden, alphas] = hidden_states(grid, captions, lengths);
  torch::Tensor loss = projected(hidden, targets(captions, lengths), {});
  if (options_.attention_reg > 0) {
    // Σ_t α over the valid steps only: each position should be looked at about once in all.
    // A caption of T words spends T units of attention over P positions, so where T > P
    // (small grids) the target is T / P: the penalty weighs coverage relative to
    // τ = max(1, T / P), which is sgrvinod's (1 - Σ_t α)² wherever T <= P.
    const int64_t steps = alphas.size(1), cells = alphas.size(2);
    torch::Tensor looked = alphas;
    torch::Tensor tau;
    if (lengths.defined()) {
      looked = alphas * length_mask(lengths - 1, steps).unsqueeze(2).to(alphas.dtype());
      tau = ((lengths - 1).to(alphas.options()) / static_cast<double>(cells)).clamp_min(1.0);
    } else {
      tau = torch::full({alphas.size(0)}, std::max(1.0, static_cast<double>(steps) / cells),
                        alphas.options());
    }
    const torch::Tensor coverage = looked.sum(/*dim=*/1) / tau.unsqueeze(1);  // (B, P)
    loss = loss + options_.attention_reg * penalty_scale * (1.0 - coverage).pow(2).mean();
  }
  return loss;
}

torch::Tensor AttentionDecoderImpl::weighted_loss(const torch::Tensor& grid,
                                                  const torch::Tensor& captions,
                                                  const torch::Tensor& lengths,
                                                  const torch::Tensor& weights) {
  const torch::Tensor hidden = hidden_states(grid, captions, lengths).first;  // checks the inputs
  const torch::Tensor row_weights = detail::caption_row_weights(
      weights, hidden.size(0), hidden.size(1), "attention decoder weights");
  return projected(hidden, targets(captions, lengths), row_weights);
}

DecodeState AttentionDecoderImpl::init_state(const torch::Tensor& raw_grid) {
  check_grid(raw_grid);
  const torch::Tensor grid = with_positions(raw_grid);
  const torch::Tensor mean = grid.mean(/*dim=*/1);
  DecodeState state;
  state.add(init_h(mean), /*row_dim=*/0);
  state.add(init_c(mean), /*row_dim=*/0);
  state.add(grid, /*row_dim=*/0);
  if (!torch::GradMode::is_enabled() && grid.device().is_cpu() &&
      grid.scalar_type() == torch::kFloat) {
    // The searches' start: the projection through step_affine, split between the threads.
    const torch::Tensor rows = grid.reshape({-1, grid.size(2)});
    state.add(
        detail::step_affine(rows, attention->encoder_att->weight, attention->encoder_att->bias)
            .view({grid.size(0), grid.size(1), -1}),
        /*row_dim=*/0);
  } else {
    state.add(attention->encoder_att(grid), /*row_dim=*/0);
  }
  state.add(grid.new_zeros({grid.size(0), grid.size(1)}), /*row_dim=*/0);
  if (options_.mean_feature) state.add(mean_gates(mean), /*row_dim=*/0);
  return state;
}

detail::AttentionSequenceWeights AttentionDecoderImpl::recurrence_weights() const {
  return {attention->decoder_att->weight,
          attention->decoder_att->bias,
          attention->full_att->weight,
          attention->full_att->bias,
          f_beta->weight,
          f_beta->bias,
          decode_step->weight_ih,
          decode_step->weight_hh,
          decode_step->bias_ih,
          decode_step->bias_hh};
}

StepStart AttentionDecoderImpl::start(const torch::Tensor& grid, DecodeWeights weights) {
  StepStart out;
  out.state = init_state(grid);
  const torch::Tensor ids =
      torch::full({grid.size(0)}, options_.start_id, grid.options().dtype(torch::kLong));
  out.scores = step_embedded(embedding(ids), out.state, weights);
  return out;
}

void AttentionDecoderImpl::check_state(const DecodeState& state) const {
  const std::size_t size = kStateSize + (options_.mean_feature ? 1 : 0);
  if (state.tensors.size() != size || state.row_dims.size() != size)
    throw InvalidArgument(fmt::format(
        "attention decoder state: expected {} tensors (h, c, grid, grid_att, alpha{}) from "
        "init_state, start or step, got {}",
        size, options_.mean_feature ? ", mean_gates" : "", state.tensors.size()));
  const torch::Tensor& h = state.tensors[kH];
  const torch::Tensor& grid = state.tensors[kGrid];
  detail::check_tensor(h.defined() && h.dim() == 2 && h.size(1) == options_.hidden_size &&
                           state.tensors[kC].defined() && state.tensors[kC].sizes() == h.sizes(),
                       "attention decoder state h",
                       fmt::format("h and c of shape [N, {}]", options_.hidden_size), h);
  detail::check_tensor(
      grid.defined() && grid.dim() == 3 && grid.size(0) == h.size(0) &&
          grid.size(2) == grid_channels() && state.tensors[kGridAtt].defined() &&
          state.tensors[kGridAtt].dim() == 3 && state.tensors[kGridAtt].size(1) == grid.size(1),
      "attention decoder state grid",
      fmt::format("a grid of shape [{}, P, {}] and its projection", h.size(0), grid_channels()),
      grid);
  if (options_.mean_feature) {
    const torch::Tensor& g = state.tensors[kMeanGates];
    detail::check_tensor(g.defined() && g.dim() == 2 && g.size(0) == h.size(0) &&
                             g.size(1) == 4 * options_.hidden_size,
                         "attention decoder state mean_gates",
                         fmt::format("shape [{}, {}]", h.size(0), 4 * options_.hidden_size), g);
  }
}

torch::Tensor AttentionDecoderImpl::step_embedded(const torch::Tensor& word_embeddings,
                                                  DecodeState& state, DecodeWeights weights) {
  check_state(state);
  torch::Tensor& h = state.tensors[kH];
  torch::Tensor& c = state.tensors[kC];
  detail::check_tensor(
      word_embeddings.defined() && word_embeddings.dim() == 2 &&
          word_embeddings.size(0) == h.size(0) && word_embeddings.size(1) == options_.embed_size,
      "attention decoder step input",
      fmt::format("word embeddings of shape [{}, {}]", h.size(0), options_.embed_size),
      word_embeddings);
  const torch::Tensor mean_in = mean_gates_of(state, options_.mean_feature);
  if (!is_training()) {
    const detail::AttentionSequenceWeights w = recurrence_weights();
    if (detail::AttentionStep::supported(h, w, fc->weight))  // searches' steps on the CPU
      return inference_step_->forward(w, fc->weight, fc->bias, word_embeddings,
                                      state.tensors[kGrid], state.tensors[kGridAtt], h, c,
                                      state.tensors[kAlpha], mean_in, weights);
  }
  auto [attended, alpha] = attention->attend(state.tensors[kGrid], state.tensors[kGridAtt], h);
  const torch::Tensor gate = torch::sigmoid(f_beta(h));
  std::tie(h, c) = lstm_step(decode_step, torch::cat({word_embeddings, gate * attended}, /*dim=*/1),
                             h, c, mean_in);
  state.tensors[kAlpha] = std::move(alpha);
  return fc(dropout(h));
}

torch::Tensor AttentionDecoderImpl::step(const torch::Tensor& ids, DecodeState& state,
                                         DecodeWeights weights) {
  detail::check_tensor(ids.defined() && ids.dim() == 1 && ids.scalar_type() == torch::kLong,
                       "attention decoder step ids", "int64 ids of shape [N]", ids);
  detail::check_ids(ids, options_.vocab_size, "attention decoder step ids");
  return step_embedded(embedding(ids), state, weights);
}

const torch::Tensor& AttentionDecoderImpl::attention_weights(const DecodeState& state) {
  if (state.tensors.size() != kStateSize && state.tensors.size() != kStateSize + 1)
    throw InvalidArgument(fmt::format("attention decoder state: expected {} or {} tensors, got {}",
                                      kStateSize, kStateSize + 1, state.tensors.size()));
  return state.tensors[kAlpha];
}

StepStart AttentionStepper::start(const at::Tensor& features) const {
  return decoder_.ptr()->start(features, weights_);  // logits: the search normalises
}

at::Tensor AttentionStepper::step(const at::Tensor& tokens, DecodeState& state) const {
  AttentionDecoderImpl& decoder = *decoder_.ptr();
  // As DecoderStepper: the host-side id check only on the CPU (it would sync a GPU each step).
  if (tokens.device().is_cpu()) return decoder.step(tokens, state, weights_);
  return decoder.step_embedded(decoder.embedding(tokens), state, weights_);
}

}  // namespace imcap
