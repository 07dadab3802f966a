#include "imcap/model.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <sstream>
#include <type_traits>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/enum_names.hpp"
#include "detail/tensor_check.hpp"
#include "imcap/checkpoint.hpp"
#include "imcap/error.hpp"
#include "imcap/weights.hpp"

namespace imcap {

namespace {

using nlohmann::json;

constexpr const char* kFormatName = "imcap-model";
constexpr const char* kEncoderPrefix = "encoder.";
constexpr const char* kDecoderPrefix = "decoder.";
constexpr const char* kTrainingPrefix = "training.";

// A config value, checked for its type: nlohmann would turn true into 1, 16.5 into 16 and
// 2^32 + 32 into 32 for an int.
template <typename T>
T get_key(const json& section, const char* section_name, const char* key, const std::string& name) {
  if (!section.is_object())
    throw FormatError(fmt::format("{}: config: '{}' is {}, expected an object", name, section_name,
                                  section.type_name()));
  const auto it = section.find(key);
  if (it == section.end())
    throw FormatError(fmt::format("{}: config: missing key '{}.{}'", name, section_name, key));
  const json& v = *it;
  const auto wrong = [&](const std::string& expected) {
    std::string got = v.dump();
    constexpr std::size_t kMaxShown = 40;
    if (got.size() > kMaxShown) got = got.substr(0, kMaxShown) + "...";
    return FormatError(fmt::format("{}: config: {}.{}: expected {}, got {}", name, section_name,
                                   key, expected, got));
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw wrong("true or false");
  } else if constexpr (std::is_integral_v<T>) {
    const bool fits =
        v.is_number_unsigned()
            ? v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())
            : v.is_number_integer() && v.get<std::int64_t>() >= std::numeric_limits<T>::min() &&
                  v.get<std::int64_t>() <= std::numeric_limits<T>::max();
    if (!fits) throw wrong("an integer");
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) throw wrong("a number");
  } else if constexpr (std::is_same_v<T, std::array<float, 3>>) {
    if (!v.is_array() || v.size() != 3 ||
        !std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_number(); }))
      throw wrong("a list of 3 numbers");
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) throw wrong("a string");
  }
  try {
    return v.get<T>();
  } catch (const json::exception&) {
    throw wrong(fmt::format("a value of another type than {}", v.type_name()));
  }
}

// Tensors of a module (parameters and buffers) under a prefix, for saving.
void add_module_tensors(TensorMap& out, const torch::nn::Module& module,
                        const std::string& prefix) {
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    out.insert(prefix + p.key(), p.value().detach().to(torch::kCPU).contiguous());
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    out.insert(prefix + b.key(), b.value().detach().to(torch::kCPU).contiguous());
}

// The entries of `all` whose name starts with prefix, with the prefix removed.
TensorMap with_prefix(const TensorMap& all, const std::string& prefix) {
  TensorMap out;
  for (const auto& [name, tensor] : all)
    if (name.compare(0, prefix.size(), prefix) == 0) out.insert(name.substr(prefix.size()), tensor);
  return out;
}

}  // namespace

std::string model_config_to_json(const ModelConfig& c) {
  json j;
  j["encoder"] = {{"arch", to_string(c.encoder.arch)},
                  {"embed_size", c.encoder.embed_size},
                  {"head_batch_norm", c.encoder.head_batch_norm},
                  {"head_batch_norm_momentum", c.encoder.head_batch_norm_momentum},
                  {"trainable_stages", c.encoder.trainable_stages}};
  if (c.decoder_kind == DecoderKind::kAttention) {
    const AttentionDecoderOptions& a = c.attention;
    j["decoder"] = {{"kind", to_string(c.decoder_kind)},
                    {"vocab_size", a.vocab_size},
                    {"encoder_dim", a.encoder_dim},
                    {"embed_size", a.embed_size},
                    {"hidden_size", a.hidden_size},
                    {"attention_dim", a.attention_dim},
                    {"dropout", a.dropout},
                    {"attention_reg", a.attention_reg},
                    {"grid_positions", a.grid_positions},
                    {"mean_feature", a.mean_feature},
                    {"start_id", a.start_id},
                    {"grid", c.grid}};
  } else {
    // Without "kind": Show and Tell files stay those of format version 1.
    j["decoder"] = {{"vocab_size", c.decoder.vocab_size},
                    {"embed_size", c.decoder.embed_size},
                    {"hidden_size", c.decoder.hidden_size},
                    {"num_layers", c.decoder.num_layers},
                    {"dropout", c.decoder.dropout},
                    {"image_inject", to_string(c.decoder.image_inject)}};
  }
  j["image"] = {
      {"resize", c.image_resize}, {"crop", c.image_crop}, {"mean", c.mean}, {"std", c.std}};
  return j.dump(2);
}

ModelConfig model_config_from_json(const std::string& text, const std::string& name) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: config: not valid JSON: {}", name, e.what()));
  }
  if (!j.is_object()) throw FormatError(fmt::format("{}: config: expected a JSON object", name));
  const auto section = [&](const char* key) -> const json& {
    const auto it = j.find(key);
    if (it == j.end()) throw FormatError(fmt::format("{}: config: missing key '{}'", name, key));
    return *it;
  };
  const json& enc = section("encoder");
  const json& dec = section("decoder");
  const json& img = section("image");
  ModelConfig c;
  try {
    c.encoder.arch = parse_resnet_arch(get_key<std::string>(enc, "encoder", "arch", name));
    if (dec.is_object() && dec.contains("kind"))
      c.decoder_kind = parse_decoder_kind(get_key<std::string>(dec, "decoder", "kind", name));
    if (c.decoder_kind == DecoderKind::kShowTell)
      c.decoder.image_inject =
          parse_image_inject(get_key<std::string>(dec, "decoder", "image_inject", name));
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: config: {}", name, e.what()));
  }
  c.encoder.embed_size = get_key<std::int64_t>(enc, "encoder", "embed_size", name);
  c.encoder.head_batch_norm = get_key<bool>(enc, "encoder", "head_batch_norm", name);
  c.encoder.head_batch_norm_momentum =
      get_key<double>(enc, "encoder", "head_batch_norm_momentum", name);
  c.encoder.trainable_stages = get_key<int>(enc, "encoder", "trainable_stages", name);
  c.image_resize = get_key<int>(img, "image", "resize", name);
  c.image_crop = get_key<int>(img, "image", "crop", name);
  c.mean = get_key<std::array<float, 3>>(img, "image", "mean", name);
  c.std = get_key<std::array<float, 3>>(img, "image", "std", name);
  const auto bad = [&](const char* what, auto value) {
    throw FormatError(fmt::format("{}: config: {} = {} is out of range", name, what, value));
  };
  const auto size = [&](const char* what, std::int64_t value, std::int64_t most) {
    if (value <= 0 || value > most) bad(what, value);
  };
  if (c.decoder_kind == DecoderKind::kAttention) {
    AttentionDecoderOptions& a = c.attention;
    a.vocab_size = get_key<std::int64_t>(dec, "decoder", "vocab_size", name);
    a.encoder_dim = get_key<std::int64_t>(dec, "decoder", "encoder_dim", name);
    a.embed_size = get_key<std::int64_t>(dec, "decoder", "embed_size", name);
    a.hidden_size = get_key<std::int64_t>(dec, "decoder", "hidden_size", name);
    a.attention_dim = get_key<std::int64_t>(dec, "decoder", "attention_dim", name);
    a.dropout = get_key<double>(dec, "decoder", "dropout", name);
    a.attention_reg = get_key<double>(dec, "decoder", "attention_reg", name);
    a.start_id = get_key<std::int64_t>(dec, "decoder", "start_id", name);
    // Files written before the option have no key: sgrvinod's decoder.
    if (dec.contains("grid_positions"))
      a.grid_positions = get_key<bool>(dec, "decoder", "grid_positions", name);
    if (dec.contains("mean_feature"))
      a.mean_feature = get_key<bool>(dec, "decoder", "mean_feature", name);
    c.grid = get_key<std::int64_t>(dec, "decoder", "grid", name);
    if (c.encoder.embed_size != 0) bad("encoder.embed_size", c.encoder.embed_size);
    size("decoder.vocab_size", a.vocab_size, 1 << 24);
    if (a.encoder_dim != feature_dim(c.encoder.arch)) bad("decoder.encoder_dim", a.encoder_dim);
    size("decoder.embed_size", a.embed_size, 1 << 20);
    size("decoder.hidden_size", a.hidden_size, 1 << 20);
    size("decoder.attention_dim", a.attention_dim, 1 << 20);
    if (!(a.dropout >= 0.0 && a.dropout < 1.0)) bad("decoder.dropout", a.dropout);
    if (!(a.attention_reg >= 0.0 && a.attention_reg < 1e6))
      bad("decoder.attention_reg", a.attention_reg);
    if (a.start_id < 0 || a.start_id >= a.vocab_size) bad("decoder.start_id", a.start_id);
    if (c.grid < 0 || c.grid > 64) bad("decoder.grid", c.grid);
  } else {
    c.decoder.vocab_size = get_key<std::int64_t>(dec, "decoder", "vocab_size", name);
    c.decoder.embed_size = get_key<std::int64_t>(dec, "decoder", "embed_size", name);
    c.decoder.hidden_size = get_key<std::int64_t>(dec, "decoder", "hidden_size", name);
    c.decoder.num_layers = get_key<std::int64_t>(dec, "decoder", "num_layers", name);
    c.decoder.dropout = get_key<double>(dec, "decoder", "dropout", name);
    size("encoder.embed_size", c.encoder.embed_size, 1 << 20);
    if (c.decoder.embed_size != c.encoder.embed_size)
      bad("decoder.embed_size", c.decoder.embed_size);
    size("decoder.hidden_size", c.decoder.hidden_size, 1 << 20);
    size("decoder.num_layers", c.decoder.num_layers, 64);
    size("decoder.vocab_size", c.decoder.vocab_size, 1 << 24);
    if (!(c.decoder.dropout >= 0.0 && c.decoder.dropout < 1.0))
      bad("decoder.dropout", c.decoder.dropout);
  }
  if (c.encoder.trainable_stages < 0 || c.encoder.trainable_stages > kResNetStages)
    bad("encoder.trainable_stages", c.encoder.trainable_stages);
  if (c.image_crop < 16 || c.image_crop > 4096) bad("image.crop", c.image_crop);
  if (c.image_resize < c.image_crop || c.image_resize > 8192) bad("image.resize", c.image_resize);
  for (const float s : c.std)
    if (!(s > 0.0f)) bad("image.std", s);
  return c;
}

DecoderKind parse_decoder_kind(const std::string& name) {
  return detail::parse_enum<DecoderKind>(name);
}

std::string to_string(DecoderKind kind) { return detail::enum_name(kind); }

CaptionModel::CaptionModel(ModelConfig config, Vocabulary vocab)
    : config_(std::move(config)), vocab_(std::move(vocab)) {
  const auto v = static_cast<std::int64_t>(vocab_.size());
  if (config_.decoder_kind == DecoderKind::kAttention) {
    if (config_.grid < 0)
      throw InvalidArgument(fmt::format("grid: expected a size >= 0, got {}", config_.grid));
    if (vocab_.start_id() < 0)
      throw InvalidArgument(
          "attention decoder: the vocabulary has no <start> token, the first step's input");
    config_.encoder.embed_size = 0;  // the decoder reads the grid, not an embedded vector
    config_.encoder.head_batch_norm = false;
    config_.attention.vocab_size = v;
    config_.attention.encoder_dim = feature_dim(config_.encoder.arch);
    config_.attention.start_id = vocab_.start_id();
    encoder_ = Encoder(config_.encoder);
    attention_decoder_ = AttentionDecoder(config_.attention);
  } else if (config_.decoder_kind == DecoderKind::kShowTell) {
    config_.decoder.vocab_size = v;
    config_.decoder.embed_size = config_.encoder.embed_size;
    encoder_ = Encoder(config_.encoder);
    decoder_ = Decoder(config_.decoder);
  } else {
    throw InvalidArgument(fmt::format("decoder kind {} is not one of: show-tell, attention",
                                      static_cast<int>(config_.decoder_kind)));
  }
}

Decoder& CaptionModel::decoder() {
  if (!decoder_)
    throw InvalidArgument(
        "this model's decoder is 'attention': use attention_decoder(), decoder_module() or "
        "step_decoder()");
  return decoder_;
}

const Decoder& CaptionModel::decoder() const { return const_cast<CaptionModel*>(this)->decoder(); }

AttentionDecoder& CaptionModel::attention_decoder() {
  if (!attention_decoder_)
    throw InvalidArgument(
        "this model's decoder is 'show-tell', not 'attention': use decoder(), decoder_module() or "
        "step_decoder()");
  return attention_decoder_;
}

const AttentionDecoder& CaptionModel::attention_decoder() const {
  return const_cast<CaptionModel*>(this)->attention_decoder();
}

torch::nn::Module& CaptionModel::decoder_module() {
  if (attention_decoder_) return *attention_decoder_;
  return *decoder_;
}

const torch::nn::Module& CaptionModel::decoder_module() const {
  return const_cast<CaptionModel*>(this)->decoder_module();
}

torch::Tensor CaptionModel::encode(const torch::Tensor& images,
                                   std::optional<torch::Dtype> compute_dtype) {
  if (attention_decoder_) return encoder_->forward_spatial(images, config_.grid, compute_dtype);
  return encoder_->forward(images, compute_dtype);
}

torch::Tensor CaptionModel::encode_cached(const torch::Tensor& features) {
  const std::int64_t c = encoder_->feature_dim();
  if (!attention_decoder_) {
    detail::check_tensor(features.defined() && features.dim() == 2 && features.size(1) == c,
                         "cached features", fmt::format("pooled CNN features (B, {})", c),
                         features);
    return encoder_->embed_features(features);
  }
  detail::check_tensor(features.defined() && ((features.dim() == 4 && features.size(1) == c) ||
                                              (features.dim() == 3 && features.size(2) == c)),
                       "cached features",
                       fmt::format("an attention model's CNN map (B, {}, h, w) or grid (B, P, {}) "
                                   "(imcap features --spatial), not pooled features",
                                   c, c),
                       features);
  // 16-bit caches (imcap features --spatial) compute in the decoder's type.
  const torch::Dtype type = attention_decoder_->fc->weight.scalar_type();
  if (features.dim() == 4) return spatial_grid(features, config_.grid).to(type);
  return features.to(type);
}

std::shared_ptr<StepDecoder> CaptionModel::step_decoder(DecodeWeights weights) const {
  if (attention_decoder_) return std::make_shared<AttentionStepper>(attention_decoder_, weights);
  return std::make_shared<DecoderStepper>(decoder_, weights);
}

torch::Tensor CaptionModel::loss(const torch::Tensor& features, const torch::Tensor& captions,
                                 const torch::Tensor& lengths, double penalty_scale) {
  if (attention_decoder_)
    return attention_decoder_->loss(features, captions, lengths, penalty_scale);
  return decoder_->loss(features, captions, lengths);
}

torch::Tensor CaptionModel::weighted_loss(const torch::Tensor& features,
                                          const torch::Tensor& captions,
                                          const torch::Tensor& lengths,
                                          const torch::Tensor& weights) {
  if (attention_decoder_)
    return attention_decoder_->weighted_loss(features, captions, lengths, weights);
  return decoder_->weighted_loss(features, captions, lengths, weights);
}

TeacherForced CaptionModel::teacher_forced(const torch::Tensor& features,
                                           const torch::Tensor& captions,
                                           const torch::Tensor& lengths) {
  TeacherForced out;
  if (attention_decoder_) {
    out.logits = attention_decoder_->forward(features, captions, lengths).logits;
    out.targets = captions.slice(/*dim=*/1, 1);
    out.lengths = lengths.defined()
                      ? lengths - 1
                      : torch::full({captions.size(0)}, captions.size(1) - 1, torch::kLong);
  } else {
    out.logits = decoder_->forward(features, captions, lengths);
    out.targets = captions;
    out.lengths = lengths.defined()
                      ? lengths
                      : torch::full({captions.size(0)}, captions.size(1), torch::kLong);
  }
  return out;
}

void CaptionModel::to(const torch::Device& device) {
  encoder_->to(device);
  decoder_module().to(device);
}

torch::Device CaptionModel::device() const { return encoder_->backbone->conv1->weight.device(); }

void CaptionModel::train(bool on) {
  encoder_->train(on);
  decoder_module().train(on);
}

ImageTransform CaptionModel::eval_transform() const {
  TransformOptions t;
  t.resize = config_.image_resize;
  t.crop = config_.image_crop;
  t.train = false;
  t.mean = config_.mean;
  t.std = config_.std;
  return ImageTransform(t);
}

void CaptionModel::save(const std::string& path, const TrainingState* training) const {
  TensorMap tensors;
  add_module_tensors(tensors, *encoder_, kEncoderPrefix);
  add_module_tensors(tensors, decoder_module(), kDecoderPrefix);
  // Version 2 only where it matters: a build that reads version 1 reads Show and Tell files.
  const int version = config_.decoder_kind == DecoderKind::kAttention ? 2 : 1;
  std::map<std::string, std::string> meta{{"format", kFormatName},
                                          {"format_version", std::to_string(version)},
                                          {"config", model_config_to_json(config_)},
                                          {"vocabulary", vocab_.to_string()}};
  if (training != nullptr) {
    if (!training->json.empty()) meta["training"] = training->json;
    for (const auto& [name, tensor] : training->tensors)
      tensors.insert(kTrainingPrefix + name, tensor.detach().to(torch::kCPU).contiguous());
  }
  save_safetensors(path, tensors, meta);
}

CaptionModel CaptionModel::load(const std::string& path, const torch::Device& device,
                                TrainingState* training) {
  std::map<std::string, std::string> meta;
  const TensorMap tensors = load_safetensors(path, &meta);
  auto get = [&](const char* key) -> const std::string& {
    const auto it = meta.find(key);
    if (it == meta.end())
      throw FormatError(fmt::format(
          "{}: not an imcap model file (no '{}' in the safetensors metadata)", path, key));
    return it->second;
  };
  if (get("format") != kFormatName)
    throw FormatError(
        fmt::format("{}: format is '{}', expected '{}'", path, get("format"), kFormatName));
  const std::string& version = get("format_version");
  if (version.empty() || version.find_first_not_of("0123456789") != std::string::npos ||
      version.size() > 6 || std::stoi(version) < 1 || std::stoi(version) > kModelFormatVersion)
    throw FormatError(
        fmt::format("{}: format version '{}' is not supported (this build reads 1 to {})", path,
                    version, kModelFormatVersion));
  ModelConfig config = model_config_from_json(get("config"), path);
  std::istringstream vocab_text(get("vocabulary"));
  Vocabulary vocab = Vocabulary::read(vocab_text, path + ": vocabulary");
  const bool attention = config.decoder_kind == DecoderKind::kAttention;
  const std::int64_t vocab_size =
      attention ? config.attention.vocab_size : config.decoder.vocab_size;
  if (static_cast<std::int64_t>(vocab.size()) != vocab_size)
    throw FormatError(
        fmt::format("{}: the vocabulary has {} tokens but the decoder was built for {}", path,
                    vocab.size(), vocab_size));
  if (attention && vocab.start_id() != config.attention.start_id)
    throw FormatError(
        fmt::format("{}: the decoder starts from id {}, the vocabulary's <start> is {}", path,
                    config.attention.start_id, vocab.start_id()));
  // The config sizes the model; a hostile one could ask for terabytes. The file must hold at
  // least the weights the config implies, so check that before allocating anything.
  std::int64_t needed = 0;
  if (attention) {
    const auto& a = config.attention;
    needed = a.vocab_size * (a.embed_size + a.hidden_size) +
             4 * a.hidden_size * (a.embed_size + a.encoder_dim + a.hidden_size) +
             a.encoder_dim * (a.attention_dim + 3 * a.hidden_size);  // a lower bound either way
  } else {
    const auto& d = config.decoder;
    needed = d.vocab_size * d.embed_size + d.vocab_size * d.hidden_size +
             d.num_layers * 4 * d.hidden_size * d.hidden_size +
             feature_dim(config.encoder.arch) * config.encoder.embed_size;
  }
  std::int64_t held = 0;
  for (const auto& [name, tensor] : tensors)
    if (name.rfind(kTrainingPrefix, 0) != 0) held += tensor.numel();
  if (needed > held)
    throw FormatError(fmt::format("{}: the config needs at least {} weights but the file holds {}",
                                  path, needed, held));
  CaptionModel model(config, std::move(vocab));
  try {
    load_state_dict(*model.encoder_, with_prefix(tensors, kEncoderPrefix));
    load_state_dict(model.decoder_module(), with_prefix(tensors, kDecoderPrefix));
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", path, e.what()));
  }
  for (const auto& [name, tensor] : tensors) {
    const bool known = name.rfind(kEncoderPrefix, 0) == 0 || name.rfind(kDecoderPrefix, 0) == 0 ||
                       name.rfind(kTrainingPrefix, 0) == 0;
    if (!known) throw FormatError(fmt::format("{}: unexpected tensor '{}'", path, name));
  }
  if (training != nullptr) {
    const auto it = meta.find("training");
    training->json = it == meta.end() ? std::string() : it->second;
    training->tensors = with_prefix(tensors, kTrainingPrefix);
  }
  model.to(device);
  model.train(false);
  return model;
}

}  // namespace imcap
