#include "imcap/import.hpp"

#include <map>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "detail/torch_modules.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

std::string shape_of(const torch::Tensor& t) {
  std::string s = "[";
  for (std::int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

const torch::Tensor& require(const TensorMap& m, const std::string& key, const std::string& file,
                             std::int64_t dims) {
  const auto* t = m.find(key);
  if (t == nullptr) throw FormatError(fmt::format("{}: missing tensor '{}'", file, key));
  if (t->dim() != dims)
    throw FormatError(
        fmt::format("{}: '{}' is {}, expected {} dimensions", file, key, shape_of(*t), dims));
  return *t;
}

// The decoder aliases other versions of the notebook use.
std::string decoder_key(const std::string& key) {
  const std::pair<const char*, const char*> aliases[] = {{"word_embeddings.", "embed."},
                                                         {"word_embedding.", "embed."},
                                                         {"embedding.", "embed."},
                                                         {"hidden2tag.", "linear."},
                                                         {"fc.", "linear."},
                                                         {"fc_out.", "linear."}};
  for (const auto& [from, to] : aliases) {
    const std::string f(from);
    if (key.compare(0, f.size(), f) == 0) return to + key.substr(f.size());
  }
  return key;
}

// The encoder's keys in imcap's names (notebook_encoder_key_to_imcap).
TensorMap encoder_in_imcap_names(const TensorMap& file, const std::string& where) {
  TensorMap out;
  for (const auto& [key, tensor] : file) {
    std::string mapped;
    try {
      mapped = notebook_encoder_key_to_imcap(key);
    } catch (const InvalidArgument& e) {
      throw FormatError(fmt::format("{}: {}", where, e.what()));
    }
    out.insert(mapped, tensor);
  }
  return out;
}

// load_state_dict, its errors naming the file the tensors came from.
void load_into(torch::nn::Module& module, const TensorMap& tensors, const std::string& where) {
  try {
    load_state_dict(module, tensors);
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", where, e.what()));
  }
}

// The torchvision ResNet behind `resnet.4.` .. `resnet.7.` keys: blocks per stage, and
// whether they are bottlenecks.
ResNetArch resnet_arch_of(const TensorMap& encoder, const std::string& file) {
  std::vector<int> blocks;
  for (int stage = 4; stage <= 7; ++stage) {
    int n = 0;
    while (encoder.contains(fmt::format("resnet.{}.{}.conv1.weight", stage, n))) ++n;
    blocks.push_back(n);
  }
  const bool bottleneck = encoder.contains("resnet.4.0.conv3.weight");
  const std::vector<std::pair<std::vector<int>, ResNetArch>> known =
      bottleneck
          ? std::vector<std::pair<std::vector<int>, ResNetArch>>{{{3, 4, 6, 3},
                                                                  ResNetArch::kResNet50},
                                                                 {{3, 4, 23, 3},
                                                                  ResNetArch::kResNet101},
                                                                 {{3, 8, 36, 3},
                                                                  ResNetArch::kResNet152}}
          : std::vector<std::pair<std::vector<int>, ResNetArch>>{
                {{2, 2, 2, 2}, ResNetArch::kResNet18}, {{3, 4, 6, 3}, ResNetArch::kResNet34}};
  for (const auto& [counts, arch] : known)
    if (counts == blocks) return arch;
  throw FormatError(fmt::format(
      "{}: the encoder's stages have {}, {}, {} and {} {} blocks (resnet.4 to resnet.7): not a "
      "torchvision ResNet-18/34/50/101/152",
      file, blocks[0], blocks[1], blocks[2], blocks[3], bottleneck ? "bottleneck" : "basic"));
}

// sgrvinod's word map: {"word": id, ..., "<unk>", "<start>", "<end>", "<pad>": 0}.
Vocabulary read_word_map(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(detail::read_file(path, std::uint64_t{1} << 30));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: not JSON: {}", path, e.what()));
  }
  if (!j.is_object() || j.empty())
    throw FormatError(fmt::format("{}: expected a word map, a JSON object word -> id", path));
  std::map<std::int64_t, std::string> by_id;
  for (const auto& [word, id] : j.items()) {
    if (!id.is_number_integer())
      throw FormatError(fmt::format("{}: the id of '{}' is not an integer", path, word));
    const auto v = id.get<std::int64_t>();
    if (!by_id.emplace(v, word).second)
      throw FormatError(
          fmt::format("{}: '{}' and '{}' both have id {}", path, by_id.at(v), word, v));
  }
  std::vector<std::string> tokens;
  for (const auto& [id, word] : by_id) {
    if (id != static_cast<std::int64_t>(tokens.size()))
      throw FormatError(
          fmt::format("{}: ids must run from 0 without gaps; {} is missing", path, tokens.size()));
    tokens.push_back(word);
  }
  try {
    return Vocabulary::from_tokens(std::move(tokens));
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", path, e.what()));
  }
}

}  // namespace

CaptionModel import_show_attend_tell(const std::string& checkpoint_path,
                                     const std::string& word_map_path,
                                     const ShowAttendTellImportOptions& options) {
  if (options.grid < 1)
    throw InvalidArgument(fmt::format("import: grid {} must be at least 1", options.grid));
  const TensorMap encoder_file = detail::load_pickled_module(checkpoint_path, "encoder");
  const TensorMap decoder = detail::load_pickled_module(checkpoint_path, "decoder");
  const std::string enc_where = checkpoint_path + " (encoder)";
  const std::string dec_where = checkpoint_path + " (decoder)";
  const ResNetArch arch = resnet_arch_of(encoder_file, enc_where);
  const TensorMap encoder = encoder_in_imcap_names(encoder_file, enc_where);
  const auto& words = require(decoder, "embedding.weight", dec_where, 2);
  const auto& enc_att = require(decoder, "attention.encoder_att.weight", dec_where, 2);
  const auto& w_hh = require(decoder, "decode_step.weight_hh", dec_where, 2);
  const std::int64_t channels = feature_dim(arch);
  if (enc_att.size(1) != channels)
    throw FormatError(fmt::format(
        "{}: attention.encoder_att.weight is {}, but the encoder ({}) gives {} channels", dec_where,
        shape_of(enc_att), to_string(arch), channels));
  Vocabulary vocab = read_word_map(word_map_path);
  if (static_cast<std::int64_t>(vocab.size()) != words.size(0))
    throw FormatError(fmt::format(
        "{}: the word map has {} words but the decoder embeds {}: they do not belong together",
        word_map_path, vocab.size(), words.size(0)));

  ModelConfig config;
  config.encoder.arch = arch;
  config.encoder.embed_size = 0;  // the grid goes to the decoder as it is
  config.encoder.trainable_stages = 0;
  config.decoder_kind = DecoderKind::kAttention;
  config.attention.embed_size = words.size(1);
  config.attention.hidden_size = w_hh.size(1);
  config.attention.attention_dim = enc_att.size(0);
  config.grid = options.grid;
  config.image_resize = options.image_size;
  config.image_crop = options.image_size;
  CaptionModel model(config, std::move(vocab));
  load_into(*model.encoder(), encoder, enc_where);
  load_into(*model.attention_decoder(), decoder, dec_where);
  model.train(false);
  return model;
}

CaptionModel import_notebook_model(const std::string& encoder_path, const std::string& decoder_path,
                                   const std::string& vocab_path,
                                   const NotebookImportOptions& options) {
  const TensorMap encoder = encoder_in_imcap_names(load_weights(encoder_path), encoder_path);
  TensorMap decoder;
  for (const auto& [key, tensor] : load_weights(decoder_path))
    decoder.insert(decoder_key(key), tensor);

  const auto& embed_w = require(encoder, "embed.weight", encoder_path, 2);
  const std::int64_t embed_size = embed_w.size(0);
  const std::int64_t channels = feature_dim(options.encoder_arch);
  if (embed_w.size(1) != channels)
    throw FormatError(fmt::format(
        "{}: embed.weight is {}, but {} gives {} features: is the encoder architecture right?",
        encoder_path, shape_of(embed_w), to_string(options.encoder_arch), channels));
  if (options.embed_size != 0 && options.embed_size != embed_size)
    throw InvalidArgument(fmt::format("{}: embed.weight is {}: the embedding size is {}, not {}",
                                      encoder_path, shape_of(embed_w), embed_size,
                                      options.embed_size));

  const auto& words = require(decoder, "embed.weight", decoder_path, 2);
  const auto& w_hh = require(decoder, "lstm.weight_hh_l0", decoder_path, 2);
  const auto& w_ih = require(decoder, "lstm.weight_ih_l0", decoder_path, 2);
  const std::int64_t vocab_size = words.size(0);
  const std::int64_t hidden = w_hh.size(1);
  if (words.size(1) != embed_size || w_ih.size(1) != embed_size)
    throw FormatError(fmt::format(
        "{}: embed.weight is {} and lstm.weight_ih_l0 is {}, but the encoder embeds to {}",
        decoder_path, shape_of(words), shape_of(w_ih), embed_size));
  if (options.hidden_size != 0 && options.hidden_size != hidden)
    throw InvalidArgument(fmt::format("{}: lstm.weight_hh_l0 is {}: the hidden size is {}, not {}",
                                      decoder_path, shape_of(w_hh), hidden, options.hidden_size));
  std::int64_t layers = 0;
  while (decoder.contains(fmt::format("lstm.weight_ih_l{}", layers))) ++layers;

  Vocabulary vocab = import_vocab_pickle(vocab_path);
  if (static_cast<std::int64_t>(vocab.size()) != vocab_size)
    throw FormatError(
        fmt::format("{}: the vocabulary has {} words but {} embeds {}: they do not belong together",
                    vocab_path, vocab.size(), decoder_path, vocab_size));

  ModelConfig config;
  config.encoder.arch = options.encoder_arch;
  config.encoder.embed_size = embed_size;
  config.encoder.head_batch_norm = encoder.contains("bn.weight");
  config.encoder.trainable_stages = 0;
  config.decoder.hidden_size = hidden;
  config.decoder.num_layers = layers;
  config.decoder.image_inject = ImageInject::kPre;
  config.image_resize = options.image_resize;
  config.image_crop = options.image_crop;
  CaptionModel model(config, std::move(vocab));
  load_into(*model.encoder(), encoder, encoder_path);
  load_into(*model.decoder(), decoder, decoder_path);
  model.train(false);
  return model;
}

}  // namespace imcap
