#include "imcap/decoder.hpp"

#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/decode_step.hpp"
#include "detail/enum_names.hpp"
#include "detail/lstm_sequence.hpp"
#include "detail/projected_cross_entropy.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/error.hpp"

namespace imcap {
namespace {

namespace nn = torch::nn;

using detail::kIgnoreIndex;

// Where the decoder's tensors lie in its DecodeState.
constexpr std::size_t kH = 0, kC = 1, kImage = 2;

void check_positive(const char* name, int64_t value) {
  if (value <= 0) {
    throw InvalidArgument(fmt::format("{}: expected a positive size, got {}", name, value));
  }
}

}  // namespace

ImageInject parse_image_inject(const std::string& name) {
  return detail::parse_enum<ImageInject>(name);
}

std::string to_string(ImageInject inject) { return detail::enum_name(inject); }

DecodeWeights parse_decode_weights(const std::string& name) {
  return detail::parse_enum<DecodeWeights>(name);
}

std::string to_string(DecodeWeights weights) { return detail::enum_name(weights); }

DecoderImpl::DecoderImpl(const DecoderOptions& options)
    : options_(options),
      decode_step_(std::make_shared<detail::DecodeStep>()),
      loss_buffer_(std::make_shared<detail::LossBuffer>()) {
  check_positive("vocab_size", options.vocab_size);
  check_positive("embed_size", options.embed_size);
  check_positive("hidden_size", options.hidden_size);
  check_positive("num_layers", options.num_layers);
  if (!(options.dropout >= 0.0 && options.dropout < 1.0)) {
    throw InvalidArgument(
        fmt::format("dropout: expected a value in [0, 1), got {}", options.dropout));
  }
  embed = register_module("embed", nn::Embedding(options.vocab_size, options.embed_size));
  lstm =
      register_module("lstm", nn::LSTM(nn::LSTMOptions(lstm_input_size(), options.hidden_size)
                                           .num_layers(options.num_layers)
                                           .dropout(options.num_layers > 1 ? options.dropout : 0.0)
                                           .batch_first(true)));
  linear = register_module("linear", nn::Linear(options.hidden_size, options.vocab_size));
  if (options.image_inject == ImageInject::kInit) {
    const int64_t state_size = options.num_layers * options.hidden_size;
    init_h = register_module("init_h", nn::Linear(options.embed_size, state_size));
    init_c = register_module("init_c", nn::Linear(options.embed_size, state_size));
  }
}

int64_t DecoderImpl::lstm_input_size() const {
  return options_.image_inject == ImageInject::kPar ? 2 * options_.embed_size : options_.embed_size;
}

void DecoderImpl::check_features(const torch::Tensor& features) const {
  detail::check_tensor(features.defined() && features.dim() == 2 &&
                           features.size(1) == options_.embed_size && features.is_floating_point(),
                       "decoder image features",
                       fmt::format("float features (B, {})", options_.embed_size), features);
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& features, const torch::Tensor& captions,
                                   const torch::Tensor& lengths) {
  return linear(hidden_states(features, captions, lengths));
}

torch::Tensor DecoderImpl::loss(const torch::Tensor& features, const torch::Tensor& captions,
                                const torch::Tensor& lengths) {
  return projected_loss(features, captions, lengths, {});
}

torch::Tensor DecoderImpl::weighted_loss(const torch::Tensor& features,
                                         const torch::Tensor& captions,
                                         const torch::Tensor& lengths,
                                         const torch::Tensor& weights) {
  const torch::Tensor row_weights =
      detail::caption_row_weights(weights, captions.size(0), captions.size(1), "decoder weights");
  return projected_loss(features, captions, lengths, row_weights);
}

torch::Tensor DecoderImpl::projected_loss(const torch::Tensor& features,
                                          const torch::Tensor& captions,
                                          const torch::Tensor& lengths,
                                          const torch::Tensor& row_weights) {
  const torch::Tensor hidden = hidden_states(features, captions, lengths);
  torch::Tensor targets = captions;
  if (lengths.defined())
    targets = captions.masked_fill(~length_mask(lengths, captions.size(1)), kIgnoreIndex);
  const torch::Tensor h = hidden.reshape({-1, options_.hidden_size});
  return detail::projected_cross_entropy(
      h, linear->weight, linear->bias, targets.reshape({-1}),
      loss_buffer_->get(h.size(0), options_.vocab_size, h.options()),
      row_weights.defined() ? row_weights.to(h.device()) : row_weights);
}

torch::Tensor DecoderImpl::hidden_states(const torch::Tensor& features,
                                         const torch::Tensor& captions,
                                         const torch::Tensor& lengths) {
  check_features(features);
  const int64_t batch = features.size(0);
  detail::check_tensor(captions.defined() && captions.dim() == 2 && captions.size(0) == batch &&
                           captions.size(1) >= 1 && captions.scalar_type() == torch::kLong,
                       "decoder captions", fmt::format("int64 ids of shape [{}, T >= 1]", batch),
                       captions);
  const int64_t steps = captions.size(1);
  torch::Tensor ids = captions.slice(/*dim=*/1, 0, steps - 1);
  if (lengths.defined()) {
    detail::check_lengths(lengths, batch, steps);
    // Padding may hold anything (even ids outside the vocabulary): embed id 0 there instead.
    ids = ids.masked_fill(~length_mask(lengths, steps - 1), 0);
  }
  detail::check_ids(ids, options_.vocab_size, "decoder captions");
  torch::Tensor words = embed(ids);  // (B, T-1, E): the inputs of steps 1..T-1
  torch::Tensor inputs;
  switch (options_.image_inject) {
    case ImageInject::kPre:
      inputs = torch::cat({features.unsqueeze(1), words}, /*dim=*/1);
      break;
    case ImageInject::kPar:
      inputs = torch::cat({features.new_zeros({batch, 1, options_.embed_size}), words}, 1);
      inputs = torch::cat({inputs, features.unsqueeze(1).expand({batch, steps, -1})}, 2);
      break;
    case ImageInject::kInit:
      inputs = torch::cat({features.new_zeros({batch, 1, options_.embed_size}), words}, 1);
      break;
  }
  const DecodeState state = init_state(features);
  const torch::Tensor& h = state.tensors[kH];
  const torch::Tensor& c = state.tensors[kC];
  if (detail::lstm_sequence_supported(inputs, lstm))
    return detail::lstm_sequence(inputs, h, c, lstm);
  return std::get<0>(lstm->forward(inputs, std::make_tuple(h, c)));
}

DecodeState DecoderImpl::init_state(const torch::Tensor& features) {
  check_features(features);
  const int64_t batch = features.size(0);
  torch::Tensor h, c;
  if (options_.image_inject == ImageInject::kInit) {
    auto reshape = [&](const torch::Tensor& flat) {
      return torch::tanh(flat)
          .view({batch, options_.num_layers, options_.hidden_size})
          .transpose(0, 1)
          .contiguous();
    };
    h = reshape(init_h(features));
    c = reshape(init_c(features));
  } else {
    h = features.new_zeros({options_.num_layers, batch, options_.hidden_size});
    c = torch::zeros_like(h);
  }
  DecodeState state;
  state.add(std::move(h), /*row_dim=*/1);
  state.add(std::move(c), /*row_dim=*/1);
  if (options_.image_inject == ImageInject::kPar) state.add(features, /*row_dim=*/0);
  return state;
}

torch::Tensor DecoderImpl::step_inputs(const torch::Tensor& inputs, DecodeState& state,
                                       DecodeWeights weights) {
  torch::Tensor& h = state.tensors[kH];
  torch::Tensor& c = state.tensors[kC];
  const bool dropout = is_training() && options_.dropout > 0 && options_.num_layers > 1;
  if (!torch::GradMode::is_enabled() && !dropout) {
    // Inference: the LSTM cell by hand and the output projection (detail/decode_step.hpp).
    const std::vector<torch::Tensor> w = lstm->all_weights();
    decode_step_->advise_huge_pages(w, linear->weight);
    torch::Tensor next_h, next_c;
    const torch::Tensor hidden = decode_step_->lstm(inputs, h, c, w, next_h, next_c);
    h = std::move(next_h);
    c = std::move(next_c);
    return decode_step_->project(hidden, linear->weight, linear->bias, weights);
  }
  auto [hidden, hc] = lstm->forward(inputs.unsqueeze(1), std::make_tuple(h, c));  // one time step
  h = std::get<0>(hc);
  c = std::get<1>(hc);
  return linear(hidden.squeeze(1));
}

StepStart DecoderImpl::start(const torch::Tensor& features, DecodeWeights weights) {
  StepStart out;
  out.state = init_state(features);
  out.scores = options_.image_inject == ImageInject::kPre
                   ? step_inputs(features, out.state, weights)
                   : step_embedded(features.new_zeros({features.size(0), options_.embed_size}),
                                   out.state, weights);
  return out;
}

void DecoderImpl::check_state(const DecodeState& state) const {
  const std::size_t n = options_.image_inject == ImageInject::kPar ? 3 : 2;
  if (state.tensors.size() != n || state.row_dims.size() != n)
    throw InvalidArgument(fmt::format(
        "decoder state: expected {} tensors (h, c{}) from init_state, start or step, got {}", n,
        n == 3 ? ", image" : "", state.tensors.size()));
  const torch::Tensor& h = state.tensors[kH];
  detail::check_tensor(h.defined() && h.dim() == 3 && h.size(0) == options_.num_layers &&
                           h.size(2) == options_.hidden_size && state.tensors[kC].defined() &&
                           state.tensors[kC].sizes() == h.sizes(),
                       "decoder state h",
                       fmt::format("h and c of shape [{}, B, {}] from init_state, start or step",
                                   options_.num_layers, options_.hidden_size),
                       h);
}

torch::Tensor DecoderImpl::step_embedded(const torch::Tensor& word_embeddings, DecodeState& state,
                                         DecodeWeights weights) {
  check_state(state);
  const int64_t batch = state.tensors[kH].size(1);
  detail::check_tensor(word_embeddings.defined() && word_embeddings.dim() == 2 &&
                           word_embeddings.size(0) == batch &&
                           word_embeddings.size(1) == options_.embed_size,
                       "decoder step input",
                       fmt::format("word embeddings of shape [{}, {}]", batch, options_.embed_size),
                       word_embeddings);
  if (options_.image_inject == ImageInject::kPar) {
    const torch::Tensor& image = state.tensors[kImage];
    detail::check_tensor(image.defined() && image.dim() == 2 && image.size(0) == batch &&
                             image.size(1) == options_.embed_size,
                         "decoder state image",
                         fmt::format("features of shape [{}, {}]", batch, options_.embed_size),
                         image);
    return step_inputs(torch::cat({word_embeddings, image}, /*dim=*/1), state, weights);
  }
  return step_inputs(word_embeddings, state, weights);
}

torch::Tensor DecoderImpl::step(const torch::Tensor& ids, DecodeState& state,
                                DecodeWeights weights) {
  detail::check_tensor(ids.defined() && ids.dim() == 1 && ids.scalar_type() == torch::kLong,
                       "decoder step ids", "int64 ids of shape [B]", ids);
  detail::check_ids(ids, options_.vocab_size, "decoder step ids");
  return step_embedded(embed(ids), state, weights);
}

StepStart DecoderStepper::start(const at::Tensor& features) const {
  return decoder_.ptr()->start(features, weights_);  // logits: the search normalises
}

at::Tensor DecoderStepper::step(const at::Tensor& tokens, DecodeState& state) const {
  DecoderImpl& decoder = *decoder_.ptr();
  // Decoder::step checks the ids against the vocabulary on the host. On a GPU that check would
  // wait for the device at every step (and rule out CUDA graphs); the searches pass only ids
  // that index the scores, so there the embedding is looked up directly.
  if (tokens.device().is_cpu()) return decoder.step(tokens, state, weights_);
  return decoder.step_embedded(decoder.embed(tokens), state, weights_);
}

torch::Tensor length_mask(const torch::Tensor& lengths, int64_t max_len) {
  detail::check_tensor(lengths.defined() && lengths.dim() == 1 && !lengths.is_floating_point(),
                       "caption lengths", "integer lengths of shape [B]", lengths);
  return torch::arange(max_len, lengths.options().dtype(torch::kLong))
      .unsqueeze(0)
      .lt(lengths.to(torch::kLong).unsqueeze(1));
}

torch::Tensor caption_loss(const torch::Tensor& logits, const torch::Tensor& targets,
                           const torch::Tensor& lengths) {
  detail::check_tensor(logits.defined() && logits.dim() == 3 && logits.is_floating_point(),
                       "caption_loss logits", "float logits (B, T, V)", logits);
  detail::check_tensor(
      targets.defined() && targets.dim() == 2 && targets.size(0) == logits.size(0) &&
          targets.size(1) == logits.size(1) && targets.scalar_type() == torch::kLong,
      "caption_loss targets",
      fmt::format("int64 ids of shape [{}, {}]", logits.size(0), logits.size(1)), targets);
  torch::Tensor t = targets;
  if (lengths.defined()) {
    detail::check_lengths(lengths, targets.size(0), targets.size(1));
    t = targets.masked_fill(~length_mask(lengths, targets.size(1)), kIgnoreIndex);
  }
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(2)}), t.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

}  // namespace imcap
