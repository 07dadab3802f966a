#include "imcap/captioner.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include "imcap/error.hpp"

namespace imcap {

namespace {

// The search's state tensors for a decoder state, and back.
SearchState to_search_state(const DecoderState& s) {
  SearchState out;
  out.add(s.h, 1);
  out.add(s.c, 1);
  if (s.image.defined()) out.add(s.image, 0);
  return out;
}

DecoderState to_decoder_state(const SearchState& s) {
  DecoderState out;
  out.h = s.tensors.at(0);
  out.c = s.tensors.at(1);
  if (s.tensors.size() > 2) out.image = s.tensors[2];
  return out;
}

}  // namespace

StepStart DecoderStepper::start(const at::Tensor& features) const {
  auto out = decoder_.ptr()->start(features, weights_);
  return StepStart{out.logits, to_search_state(out.state)};  // the search normalises
}

at::Tensor DecoderStepper::step(const at::Tensor& tokens, SearchState& state) const {
  DecoderImpl& decoder = *decoder_.ptr();
  // Decoder::step checks the ids against the vocabulary on the host. On a GPU that check would
  // wait for the device at every step (and rule out CUDA graphs); the searches pass only ids
  // that index the scores, so there the embedding is looked up directly.
  auto out = tokens.device().is_cpu()
                 ? decoder.step(tokens, to_decoder_state(state), weights_)
                 : decoder.step_embedded(decoder.embed(tokens), to_decoder_state(state), weights_);
  state = to_search_state(out.state);
  return out.logits;
}

SearchOptions search_options(const CaptionOptions& o, const Vocabulary& vocab) {
  if (o.beam_size < 1)
    throw InvalidArgument(fmt::format("beam size {} must be at least 1", o.beam_size));
  if (o.max_length < 1)
    throw InvalidArgument(fmt::format("max length {} must be at least 1", o.max_length));
  SearchOptions s = SearchOptions::for_vocabulary(vocab);
  s.beam_size = o.beam_size;
  s.max_length = o.max_length;
  s.alpha = o.alpha;
  s.forbid_unk = o.forbid_unk;
  s.num_return = 1;
  return s;
}

Captioner Captioner::load(const std::string& path, const torch::Device& device,
                          CaptionOptions options) {
  return Captioner(std::make_shared<CaptionModel>(CaptionModel::load(path, device)), options);
}

Captioner::Captioner(std::shared_ptr<CaptionModel> model, CaptionOptions options)
    : model_(std::move(model)), options_(options), transform_(model_->eval_transform()) {
  search_options(options_, model_->vocab());  // validates
}

std::vector<Caption> Captioner::caption_features(const torch::Tensor& features,
                                                 const CaptionOptions& options) const {
  torch::NoGradGuard no_grad;
  const DecoderStepper stepper(model_->decoder(), options.decode_weights);
  const auto results = search(stepper, features, search_options(options, model_->vocab()));
  std::vector<Caption> out;
  out.reserve(results.size());
  for (const auto& hyps : results) {
    Caption c;
    if (!hyps.empty()) {
      c.ids = hyps.front().tokens;
      c.log_prob = hyps.front().log_prob;
    }
    c.tokens = model_->vocab().decode_tokens(c.ids);
    for (const auto& w : c.tokens) c.text += (c.text.empty() ? "" : " ") + w;
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<Caption> Captioner::caption_tensor_batch(const torch::Tensor& images,
                                                     const CaptionOptions& options) const {
  if (images.dim() != 4 || images.size(1) != 3)
    throw InvalidArgument(
        fmt::format("captioner: expected images [B, 3, H, W], got {} dimensions", images.dim()));
  torch::NoGradGuard no_grad;
  Encoder encoder = model_->encoder();  // a handle on the shared module; forward is not const
  const auto features =
      encoder->forward(images.to(model_->device(), torch::kFloat32), options.encoder_dtype);
  return caption_features(features, options);
}

Caption Captioner::caption(const torch::Tensor& image) const {
  if (image.dim() != 3)
    throw InvalidArgument(
        fmt::format("captioner: expected an image [3, H, W], got {} dimensions", image.dim()));
  return caption_tensor_batch(image.unsqueeze(0), options_).front();
}

Caption Captioner::caption(const Image& image) const { return caption(transform_(image)); }

Caption Captioner::caption(const std::string& image_path) const {
  return caption(decode_image(image_path, transform_.fast_decode_options()));
}

std::vector<Caption> Captioner::caption_batch(const std::vector<Image>& images) const {
  if (images.empty()) return {};
  std::vector<torch::Tensor> xs;
  xs.reserve(images.size());
  for (const auto& img : images) xs.push_back(transform_(img));
  return caption_tensor_batch(torch::stack(xs), options_);
}

std::vector<Caption> Captioner::caption_batch(const std::vector<std::string>& paths,
                                              const CaptionOptions& options) const {
  if (paths.empty()) return {};
  std::vector<torch::Tensor> xs;
  xs.reserve(paths.size());
  for (const auto& p : paths)
    xs.push_back(transform_(decode_image(p, transform_.fast_decode_options())));
  return caption_tensor_batch(torch::stack(xs), options);
}

std::vector<Caption> Captioner::caption_batch(const std::vector<std::string>& paths) const {
  return caption_batch(paths, options_);
}

}  // namespace imcap
