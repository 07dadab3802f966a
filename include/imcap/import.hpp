// Importing models trained with PyTorch (`imcap import-pytorch`): the original notebooks'
// encoder and decoder state dicts (torch.save) and their pickled vocabulary; and sgrvinod's
// Show, Attend and Tell checkpoints (whole pickled modules) with their word map.
//
//   imcap::NotebookImportOptions opts;
//   opts.encoder_arch = imcap::ResNetArch::kResNet50;
//   imcap::CaptionModel model = imcap::import_notebook_model(
//       "encoder-3.pkl", "decoder-3.pkl", "vocab.pkl", opts);
//   model.save("notebook.imcap");
//   imcap::Vocabulary vocab = imcap::import_vocab_pickle("vocab.pkl");  // the vocabulary alone
#pragma once

#include <string>

#include "imcap/model.hpp"
#include "imcap/vocabulary.hpp"

namespace imcap {

/// What the notebook files do not say themselves.
struct NotebookImportOptions {
  /// The torchvision ResNet the notebook's EncoderCNN wrapped. Default ResNet-50 (the seed's).
  ResNetArch encoder_arch = ResNetArch::kResNet50;
  /// Expected embedding size; 0 = take it from the weights. Default 0.
  std::int64_t embed_size = 0;
  /// Expected LSTM hidden size; 0 = take it from the weights. Default 0.
  std::int64_t hidden_size = 0;
  /// Image sizes of the notebook's test transform. Default 256 -> 224.
  int image_resize = 256;
  int image_crop = 224;
};

/// Builds a CaptionModel from the notebook's files:
/// - encoder: EncoderCNN's state dict: `resnet.0.weight` ... `resnet.7.2.bn3.running_var`,
///   then `embed.*` (or the tutorial's `linear.*` + `bn.*`);
/// - decoder: DecoderRNN's state dict: `embed.*`, `lstm.*`, `linear.*` (aliases
///   `word_embeddings.*`, `hidden2tag.*`/`fc.*` are accepted, see docs/import.md);
/// - vocab: the pickled `vocabulary.Vocabulary` (`word2idx`, `idx2word`), ids kept as they are.
/// The result uses the seed's architecture (image fed at step 0). Throws FormatError or
/// InvalidArgument naming the file and the tensor when something does not fit.
CaptionModel import_notebook_model(const std::string& encoder_path, const std::string& decoder_path,
                                   const std::string& vocab_path,
                                   const NotebookImportOptions& options = {});

/// What sgrvinod's checkpoint does not say itself.
struct ShowAttendTellImportOptions {
  /// S of the encoder's AdaptiveAvgPool2d((S, S)): the project's encoded_image_size. Default 14.
  int grid = 14;
  /// Side of the images: the project resizes them to 256 x 256 (imcap resizes the shorter side
  /// to it and crops the centre square, the same for square images). Default 256.
  int image_size = 256;
};

/// Builds an attention CaptionModel from sgrvinod's "a-PyTorch-Tutorial-to-Image-Captioning"
/// files: the checkpoint that train.py saves (`BEST_checkpoint_*.pth.tar`: a dict whose
/// "encoder" and "decoder" are the whole pickled Encoder and DecoderWithAttention, read by the
/// restricted unpickler without running anything; state dicts under those keys work too) and
/// its word map (`WORDMAP_*.json`, word -> id). The ResNet is recognised from the encoder's
/// blocks; sizes come from the tensors. Throws FormatError naming the file and the tensor when
/// something does not fit, SecurityError when the pickle asks for a dangerous global.
CaptionModel import_show_attend_tell(const std::string& checkpoint_path,
                                     const std::string& word_map_path,
                                     const ShowAttendTellImportOptions& options = {});

/// Reads a pickled vocabulary object (any class whose state holds word2idx and/or idx2word, or a
/// plain dict with those keys) through the restricted unpickler; nothing in it is executed.
/// Ids are kept exactly as in the file (<start>=0, <end>=1, <unk>=2 for the Udacity notebook).
/// Throws FormatError naming the file when idx2word is not 0..n-1, when word2idx is not its
/// inverse, or when a special token is missing; SecurityError when the pickle asks for a
/// dangerous global.
Vocabulary import_vocab_pickle(const std::string& path);

}  // namespace imcap
