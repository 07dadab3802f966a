#include "imcap/import.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

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

}  // namespace

CaptionModel import_notebook_model(const std::string& encoder_path, const std::string& decoder_path,
                                   const std::string& vocab_path,
                                   const NotebookImportOptions& options) {
  TensorMap encoder_file = load_weights(encoder_path);
  TensorMap encoder;
  for (const auto& [key, tensor] : encoder_file) {
    std::string mapped;
    try {
      mapped = notebook_encoder_key_to_imcap(key);
    } catch (const InvalidArgument& e) {
      throw FormatError(fmt::format("{}: {}", encoder_path, e.what()));
    }
    encoder.insert(mapped, tensor);
  }
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
  try {
    load_state_dict(*model.encoder(), encoder);
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", encoder_path, e.what()));
  }
  try {
    load_state_dict(*model.decoder(), decoder);
  } catch (const InvalidArgument& e) {
    throw FormatError(fmt::format("{}: {}", decoder_path, e.what()));
  }
  model.train(false);
  return model;
}

}  // namespace imcap
