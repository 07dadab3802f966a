#include "imcap/captioner.hpp"

#include <mutex>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/cuda_graph_greedy.hpp"
#include "detail/hypothesis.hpp"
#include "imcap/error.hpp"

namespace imcap {

// The CUDA-graph greedy engines, one per set of options that changes the captured loop.
struct Captioner::GraphCache {
  using Key = std::tuple<int, bool, int, double>;  // max_length, forbid_unk, min_length, alpha
  static constexpr std::size_t kMaxEngines = 4;
  std::mutex mutex;
  std::vector<std::pair<Key, std::shared_ptr<detail::CudaGraphGreedy>>> engines;

  std::shared_ptr<detail::CudaGraphGreedy> get(const CaptionModel& model, const CaptionOptions& o) {
    const Key key{o.max_length, o.forbid_unk, o.min_length, o.alpha};
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& [k, engine] : engines)
      if (k == key) return engine;
    if (engines.size() == kMaxEngines) engines.erase(engines.begin());
    engines.emplace_back(key, std::make_shared<detail::CudaGraphGreedy>(
                                  model.decoder(), o, SpecialTokens::of(model.vocab())));
    return engines.back().second;
  }
};

Captioner Captioner::load(const std::string& path, const torch::Device& device,
                          CaptionOptions options) {
  return Captioner(std::make_shared<CaptionModel>(CaptionModel::load(path, device)), options);
}

Captioner::Captioner(std::shared_ptr<CaptionModel> model, CaptionOptions options)
    : model_(std::move(model)),
      options_(options),
      transform_(model_->eval_transform()),
      graphs_(std::make_unique<GraphCache>()) {
  detail::check_search_options(options_, "captioner");
}

Captioner::~Captioner() = default;
Captioner::Captioner(const Captioner& other)
    : model_(other.model_),
      options_(other.options_),
      transform_(other.transform_),
      graphs_(std::make_unique<GraphCache>()) {}
Captioner::Captioner(Captioner&&) noexcept = default;
Captioner& Captioner::operator=(const Captioner& other) {
  if (this != &other) *this = Captioner(other);
  return *this;
}
Captioner& Captioner::operator=(Captioner&&) noexcept = default;

std::vector<std::vector<Caption>> Captioner::candidates(const torch::Tensor& features,
                                                        const CaptionOptions& options) const {
  detail::check_search_options(options, "captioner");
  torch::NoGradGuard no_grad;
  const SpecialTokens tokens = SpecialTokens::of(model_->vocab());
  std::vector<std::vector<Hypothesis>> results;
  if (options.beam_size == 1 && features.is_cuda() && detail::CudaGraphGreedy::available() &&
      model_->decoder_kind() == DecoderKind::kShowTell) {
    for (auto& h : (*graphs_->get(*model_, options))(features)) results.push_back({std::move(h)});
  } else {
    results = search(*model_->step_decoder(options.decode_weights), features, options, tokens);
  }
  std::vector<std::vector<Caption>> out(results.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    for (const Hypothesis& h : results[i]) {
      Caption c;
      c.ids = h.tokens;
      c.log_prob = h.log_prob;
      c.tokens = model_->vocab().decode_tokens(c.ids);
      for (const auto& w : c.tokens) c.text += (c.text.empty() ? "" : " ") + w;
      out[i].push_back(std::move(c));
    }
  }
  if (options.attention_weights) add_attention_weights(features, out);
  return out;
}

// Runs every caption's words back through the attention decoder (teacher forcing from <start>,
// all captions in one batch) and keeps the weights with which each word was predicted: the
// same states as in the search, since a state depends only on the grid and the words before.
void Captioner::add_attention_weights(const torch::Tensor& features,
                                      std::vector<std::vector<Caption>>& captions) const {
  if (model_->decoder_kind() != DecoderKind::kAttention)
    throw InvalidArgument(fmt::format(
        "attention_weights: this model's decoder is '{}', which has no attention; train one "
        "with --decoder attention",
        to_string(model_->decoder_kind())));
  std::vector<std::int64_t> rows;
  std::vector<Caption*> targets;
  std::int64_t longest = 0;
  for (std::size_t i = 0; i < captions.size(); ++i) {
    for (Caption& c : captions[i]) {
      c.attention = torch::zeros({0, features.size(1)});
      if (c.ids.empty()) continue;
      rows.push_back(static_cast<std::int64_t>(i));
      targets.push_back(&c);
      longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(c.ids.size()));
    }
  }
  if (targets.empty()) return;
  const auto n = static_cast<std::int64_t>(targets.size());
  const std::int64_t start = model_->vocab().start_id();
  torch::Tensor words = torch::full({n, longest + 1}, start, torch::kLong);
  torch::Tensor lengths = torch::empty({n}, torch::kLong);
  auto w = words.accessor<std::int64_t, 2>();
  for (std::int64_t r = 0; r < n; ++r) {
    const auto& ids = targets[static_cast<std::size_t>(r)]->ids;
    for (std::size_t t = 0; t < ids.size(); ++t) w[r][static_cast<std::int64_t>(t) + 1] = ids[t];
    lengths[r] = static_cast<std::int64_t>(ids.size()) + 1;
  }
  const auto device = features.device();
  const torch::Tensor grid =
      features.index_select(0, torch::tensor(rows, torch::kLong).to(device)).to(torch::kFloat);
  const torch::Tensor alphas = model_->attention_decoder()
                                   ->forward(grid, words.to(device), lengths.to(device))
                                   .alphas.to(torch::kCPU, torch::kFloat);
  for (std::int64_t r = 0; r < n; ++r) {
    Caption& c = *targets[static_cast<std::size_t>(r)];
    c.attention = alphas[r].slice(0, 0, static_cast<std::int64_t>(c.ids.size())).clone();
  }
}

std::vector<Caption> Captioner::caption_features(const torch::Tensor& features,
                                                 const CaptionOptions& options) const {
  CaptionOptions best = options;
  best.num_return = 1;
  std::vector<Caption> out;
  for (auto& list : candidates(features, best))
    out.push_back(list.empty() ? Caption{} : std::move(list.front()));
  return out;
}

std::vector<Caption> Captioner::caption_features(const torch::Tensor& features) const {
  return caption_features(features, options_);
}

torch::Tensor Captioner::encode(const torch::Tensor& images, const CaptionOptions& options) const {
  if (images.dim() != 4 || images.size(1) != 3)
    throw InvalidArgument(
        fmt::format("captioner: expected images [B, 3, H, W], got {} dimensions", images.dim()));
  torch::NoGradGuard no_grad;
  // The model is shared; encode() keeps no per-call state.
  return model_->encode(images.to(model_->device(), torch::kFloat32), options.encoder_dtype);
}

torch::Tensor Captioner::encode(const std::vector<Image>& images,
                                const CaptionOptions& options) const {
  if (images.empty()) throw InvalidArgument("captioner: no images to encode");
  std::vector<torch::Tensor> xs;
  xs.reserve(images.size());
  for (const auto& img : images) xs.push_back(transform_(img));
  return encode(torch::stack(xs), options);
}

torch::Tensor Captioner::encode(const std::vector<std::string>& paths,
                                const CaptionOptions& options) const {
  if (paths.empty()) throw InvalidArgument("captioner: no image files to encode");
  std::vector<torch::Tensor> xs;
  xs.reserve(paths.size());
  for (const auto& p : paths)
    xs.push_back(transform_(decode_image(p, transform_.fast_decode_options())));
  return encode(torch::stack(xs), options);
}

std::vector<Caption> Captioner::caption_batch(const torch::Tensor& images,
                                              const CaptionOptions& options) const {
  return caption_features(encode(images, options), options);
}

std::vector<Caption> Captioner::caption_batch(const std::vector<Image>& images,
                                              const CaptionOptions& options) const {
  if (images.empty()) return {};
  return caption_features(encode(images, options), options);
}

std::vector<Caption> Captioner::caption_batch(const std::vector<std::string>& paths,
                                              const CaptionOptions& options) const {
  if (paths.empty()) return {};
  return caption_features(encode(paths, options), options);
}

std::vector<Caption> Captioner::caption_batch(const torch::Tensor& images) const {
  return caption_batch(images, options_);
}

std::vector<Caption> Captioner::caption_batch(const std::vector<Image>& images) const {
  return caption_batch(images, options_);
}

std::vector<Caption> Captioner::caption_batch(const std::vector<std::string>& paths) const {
  return caption_batch(paths, options_);
}

Caption Captioner::caption(const torch::Tensor& image, const CaptionOptions& options) const {
  if (image.dim() != 3)
    throw InvalidArgument(
        fmt::format("captioner: expected an image [3, H, W], got {} dimensions", image.dim()));
  return caption_batch(image.unsqueeze(0), options).front();
}

Caption Captioner::caption(const Image& image, const CaptionOptions& options) const {
  return caption(transform_(image), options);
}

Caption Captioner::caption(const std::string& image_path, const CaptionOptions& options) const {
  return caption(decode_image(image_path, transform_.fast_decode_options()), options);
}

Caption Captioner::caption(const torch::Tensor& image) const { return caption(image, options_); }

Caption Captioner::caption(const Image& image) const { return caption(image, options_); }

Caption Captioner::caption(const std::string& image_path) const {
  return caption(image_path, options_);
}

}  // namespace imcap
