#include "imcap/model.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <sstream>
#include <type_traits>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

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
  j["decoder"] = {
      {"vocab_size", c.decoder.vocab_size},   {"embed_size", c.decoder.embed_size},
      {"hidden_size", c.decoder.hidden_size}, {"num_layers", c.decoder.num_layers},
      {"dropout", c.decoder.dropout},         {"image_inject", to_string(c.decoder.image_inject)}};
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
  c.decoder.vocab_size = get_key<std::int64_t>(dec, "decoder", "vocab_size", name);
  c.decoder.embed_size = get_key<std::int64_t>(dec, "decoder", "embed_size", name);
  c.decoder.hidden_size = get_key<std::int64_t>(dec, "decoder", "hidden_size", name);
  c.decoder.num_layers = get_key<std::int64_t>(dec, "decoder", "num_layers", name);
  c.decoder.dropout = get_key<double>(dec, "decoder", "dropout", name);
  c.image_resize = get_key<int>(img, "image", "resize", name);
  c.image_crop = get_key<int>(img, "image", "crop", name);
  c.mean = get_key<std::array<float, 3>>(img, "image", "mean", name);
  c.std = get_key<std::array<float, 3>>(img, "image", "std", name);
  const auto bad = [&](const char* what, auto value) {
    throw FormatError(fmt::format("{}: config: {} = {} is out of range", name, what, value));
  };
  if (c.encoder.embed_size <= 0 || c.encoder.embed_size > (1 << 20))
    bad("encoder.embed_size", c.encoder.embed_size);
  if (c.decoder.embed_size != c.encoder.embed_size) bad("decoder.embed_size", c.decoder.embed_size);
  if (c.decoder.hidden_size <= 0 || c.decoder.hidden_size > (1 << 20))
    bad("decoder.hidden_size", c.decoder.hidden_size);
  if (c.decoder.num_layers <= 0 || c.decoder.num_layers > 64)
    bad("decoder.num_layers", c.decoder.num_layers);
  if (c.decoder.vocab_size <= 0 || c.decoder.vocab_size > (1 << 24))
    bad("decoder.vocab_size", c.decoder.vocab_size);
  if (c.encoder.trainable_stages < 0 || c.encoder.trainable_stages > kResNetStages)
    bad("encoder.trainable_stages", c.encoder.trainable_stages);
  if (c.image_crop < 16 || c.image_crop > 4096) bad("image.crop", c.image_crop);
  if (c.image_resize < c.image_crop || c.image_resize > 8192) bad("image.resize", c.image_resize);
  if (!(c.decoder.dropout >= 0.0 && c.decoder.dropout < 1.0))
    bad("decoder.dropout", c.decoder.dropout);
  for (const float s : c.std)
    if (!(s > 0.0f)) bad("image.std", s);
  return c;
}

CaptionModel::CaptionModel(ModelConfig config, Vocabulary vocab)
    : config_(std::move(config)), vocab_(std::move(vocab)) {
  config_.decoder.vocab_size = static_cast<std::int64_t>(vocab_.size());
  config_.decoder.embed_size = config_.encoder.embed_size;
  encoder_ = Encoder(config_.encoder);
  decoder_ = Decoder(config_.decoder);
}

void CaptionModel::to(const torch::Device& device) {
  encoder_->to(device);
  decoder_->to(device);
}

torch::Device CaptionModel::device() const { return decoder_->embed->weight.device(); }

void CaptionModel::train(bool on) {
  encoder_->train(on);
  decoder_->train(on);
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
  add_module_tensors(tensors, *decoder_, kDecoderPrefix);
  std::map<std::string, std::string> meta{{"format", kFormatName},
                                          {"format_version", std::to_string(kModelFormatVersion)},
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
  if (static_cast<std::int64_t>(vocab.size()) != config.decoder.vocab_size)
    throw FormatError(
        fmt::format("{}: the vocabulary has {} tokens but the decoder was built for {}", path,
                    vocab.size(), config.decoder.vocab_size));
  // The config sizes the model; a hostile one could ask for terabytes. The file must hold at
  // least the weights the config implies, so check that before allocating anything.
  const auto& d = config.decoder;
  const std::int64_t needed = d.vocab_size * d.embed_size + d.vocab_size * d.hidden_size +
                              d.num_layers * 4 * d.hidden_size * d.hidden_size +
                              feature_dim(config.encoder.arch) * config.encoder.embed_size;
  std::int64_t held = 0;
  for (const auto& [name, tensor] : tensors)
    if (name.rfind(kTrainingPrefix, 0) != 0) held += tensor.numel();
  if (needed > held)
    throw FormatError(fmt::format("{}: the config needs at least {} weights but the file holds {}",
                                  path, needed, held));
  CaptionModel model(config, std::move(vocab));
  try {
    load_state_dict(*model.encoder_, with_prefix(tensors, kEncoderPrefix));
    load_state_dict(*model.decoder_, with_prefix(tensors, kDecoderPrefix));
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
