// COCO captions: the annotation file (notebook 0) and the dataset of images and captions
// that training reads (data_loader.py). Karpathy's split file (dataset_coco.json, the split that
// papers report on) reads into the same annotations, one split or several at a time.
//
//   auto vocab = imcap::Vocabulary::build({"captions_train2014.json"});
//   imcap::CocoDataset data("captions_train2014.json", "train2014/", vocab,
//                           imcap::ImageTransform::train());
//   imcap::CaptionItem item = data.get(0, rng);   // image [3,224,224] + ids <start> ... <end>
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "imcap/image.hpp"
#include "imcap/vocabulary.hpp"

namespace imcap {

/// One entry of "images".
struct CocoImage {
  std::int64_t id = 0;
  std::string file_name;  ///< relative to the image root; never absolute, never with ".."
};

/// One entry of "annotations" (or one of "sentences" in a Karpathy split file).
struct CocoCaption {
  std::int64_t id = 0;
  std::int64_t image_id = 0;
  std::string caption;  ///< the raw text: what evaluation compares against
  /// The caption's words as the file gives them (Karpathy's "tokens"), which training then uses
  /// instead of tokenizing `caption`. Empty for COCO files.
  std::vector<std::string> tokens;
};

/// Options of CocoAnnotations::load for Karpathy's split files.
struct AnnotationOptions {
  /// The images to read from a Karpathy split file (dataset_coco.json): one split name
  /// ("train", "restval", "val", "test") or several joined by '+' ("train+restval", the
  /// 113,287 training images papers use). Empty: every image. COCO files have no splits:
  /// naming one for them is an error.
  std::string split;
};

/// A parsed and validated captions file: COCO's captions_*.json, or Karpathy's split file
/// (dataset_coco.json, also dataset_flickr8k/30k.json), told apart by their layout. A Karpathy
/// file's images take their COCO id ("cocoid", else "imgid"), their file name "filepath/filename"
/// (relative to the folder that holds train2014/ and val2014/), and their sentences as captions
/// with the raw text and the file's tokens.
class CocoAnnotations {
 public:
  /// Reads and validates a file. Throws IoError, or FormatError naming the file and the JSON
  /// path (e.g. "f.json: annotations[17].caption: expected a string, got null") for malformed
  /// JSON, missing or mistyped keys, duplicate ids, captions of unknown images, and file names
  /// that are absolute or contain "..". A split that the file does not have is an
  /// InvalidArgument naming the splits it has.
  static CocoAnnotations load(const std::string& path, const AnnotationOptions& options = {});
  /// Parses JSON text; `name` stands for the file in error messages.
  static CocoAnnotations parse(std::string_view json, const std::string& name,
                               const AnnotationOptions& options = {});
  /// Annotations built in memory, validated as a file's are (unique image and caption ids,
  /// captions of known images, safe relative file names); `name` stands for their source.
  static CocoAnnotations from(std::vector<CocoImage> images, std::vector<CocoCaption> captions,
                              const std::string& name = "<memory>");

  const std::vector<CocoImage>& images() const { return images_; }
  const std::vector<CocoCaption>& captions() const { return captions_; }
  /// Whether an image with this id exists.
  bool has_image(std::int64_t image_id) const { return image_index_.count(image_id) != 0; }
  /// The image with this id. Throws InvalidArgument when there is none.
  const CocoImage& image(std::int64_t image_id) const;
  /// Indices into captions() of the captions of one image (empty if it has none).
  const std::vector<std::size_t>& captions_of(std::int64_t image_id) const;
  /// The file the annotations came from (or the name given to parse).
  const std::string& source() const { return source_; }
  /// Whether they came from a Karpathy split file.
  bool karpathy() const { return karpathy_; }
  /// A Karpathy file's splits with their numbers of images, the whole file's (before the
  /// split option chose among them); empty for COCO files.
  const std::map<std::string, std::size_t>& splits() const { return splits_; }

 private:
  void index(const std::string& name);

  std::string source_;
  bool karpathy_ = false;
  std::map<std::string, std::size_t> splits_;
  std::vector<CocoImage> images_;
  std::vector<CocoCaption> captions_;
  std::unordered_map<std::int64_t, std::size_t> image_index_;
  std::unordered_map<std::int64_t, std::vector<std::size_t>> captions_by_image_;
};

/// Numbers notebook 0 looks at (`imcap info`).
struct CaptionStatistics {
  std::size_t images = 0;
  std::size_t captions = 0;
  std::size_t images_without_captions = 0;
  /// caption length in tokens -> number of captions.
  std::map<std::size_t, std::size_t> length_histogram;
  /// The most common tokens with their counts, most frequent first (ties alphabetical).
  std::vector<std::pair<std::string, std::int64_t>> top_words;
};

/// Computes the statistics of an annotation file, keeping the `top` most common words.
CaptionStatistics caption_statistics(const CocoAnnotations& annotations, std::size_t top = 20);

/// Options of CocoDataset.
struct CocoDatasetOptions {
  DecodeOptions decode;  ///< limits for image decoding
  /// Skip images whose file is missing, with a warning on stderr, instead of throwing. Default off.
  bool skip_missing_images = false;
  /// Drop captions longer than this many tokens (without <start>/<end>); 0 = keep all. Default 0.
  std::size_t max_caption_tokens = 0;
  /// Cut captions to their first this many tokens (then <end>), as ruotianluo's
  /// prepro_labels.py does with max_length 16; 0 = keep them whole (the notebook). Default 0.
  std::size_t clip_caption_tokens = 0;
  /// Precomputed image features, [N, C] float or grids [N, P, C] in any floating type
  /// (FeatureSet::features, from `imcap features [--spatial]`), used instead of the image
  /// files: image() returns an image's row [C] or grid [P, C] (no transform), and image files
  /// are neither read nor checked. Undefined (default): images are decoded.
  at::Tensor features;
  /// COCO image id of each row of `features`, [N] int64 (FeatureSet::image_ids). Every
  /// captioned image needs a row; images without one count as missing (see
  /// skip_missing_images).
  at::Tensor feature_image_ids;
  /// Words exchanged in the captions of an image that the training transform mirrored
  /// (TransformOptions::flip_probability), so that a flipped image's caption stays true. Pairs
  /// whose words are not both in the vocabulary are ignored. Default {left, right}.
  std::vector<std::pair<std::string, std::string>> flip_swap_words = {{"left", "right"}};
  /// Keep up to this many bytes of decoded images, resized to the transform's resize size, in
  /// memory: later epochs then only crop (and flip) them, with the same result as decoding
  /// again. Images beyond the budget are decoded each time. 0 = no cache. Default 1 GiB.
  std::size_t cache_bytes = std::size_t{1} << 30;
};

/// One training example.
struct CaptionItem {
  at::Tensor image;               ///< [3, H, W] float32, transformed
  std::vector<std::int64_t> ids;  ///< <start> words... <end>
  std::int64_t image_id = 0;
  std::size_t caption_index = 0;  ///< index into CocoDataset::captions()
};

/// Images on disk plus their tokenized captions: the seed's CoCoDataset.
class CocoDataset {
 public:
  /// Loads and validates the annotations, checks that every image file exists under image_root
  /// (throwing IoError listing the missing ones unless skip_missing_images; with features,
  /// InvalidArgument for images without a feature row) and
  /// tokenizes every caption with the vocabulary.
  CocoDataset(const std::string& annotation_file, const std::string& image_root, Vocabulary vocab,
              ImageTransform transform, CocoDatasetOptions options = {});
  CocoDataset(CocoAnnotations annotations, const std::string& image_root, Vocabulary vocab,
              ImageTransform transform, CocoDatasetOptions options = {});

  /// Number of captions (one example per caption, as in the seed).
  std::size_t size() const { return caption_ids_.size(); }
  /// Number of images that have at least one caption.
  std::size_t num_images() const { return image_ids_.size(); }

  /// The example for caption `index`; rng drives the random parts of a training transform.
  /// Throws InvalidArgument when index >= size().
  CaptionItem get(std::size_t index, std::mt19937_64& rng) const;
  /// The token ids (<start> ... <end>) of caption `index`.
  const std::vector<std::int64_t>& caption_ids(std::size_t index) const;
  /// Image id of caption `index`.
  std::int64_t image_id_of(std::size_t index) const;
  /// Decoded and transformed image by image id ([3, H, W]), or its precomputed features ([C],
  /// or a grid [P, C]) when the dataset has them. `flipped`, when given, is set to whether the
  /// transform mirrored the image (then its captions read through mirrored_token()).
  at::Tensor image(std::int64_t image_id, std::mt19937_64& rng, bool* flipped = nullptr) const;
  /// The token a mirrored image's caption has in place of `id`: its flip_swap_words partner,
  /// or `id` itself.
  std::int64_t mirrored_token(std::int64_t id) const {
    const auto it = mirrored_.find(id);
    return it == mirrored_.end() ? id : it->second;
  }
  /// Whether image() returns precomputed features (CocoDatasetOptions::features).
  bool has_features() const { return options_.features.defined(); }
  /// Decoded image (no transform) by image id.
  Image raw_image(std::int64_t image_id) const;
  /// Full path of an image file.
  std::string image_path(std::int64_t image_id) const;
  /// Raw caption texts of one image (the references for evaluation).
  std::vector<std::string> references(std::int64_t image_id) const;
  /// Caption indices of one image.
  const std::vector<std::size_t>& captions_of_image(std::int64_t image_id) const;
  /// Ids of the images that have captions, in file order.
  const std::vector<std::int64_t>& image_ids() const { return image_ids_; }

  const CocoAnnotations& annotations() const { return annotations_; }
  const Vocabulary& vocabulary() const { return vocab_; }
  const ImageTransform& transform() const { return transform_; }

 private:
  CocoAnnotations annotations_;
  std::string image_root_;
  Vocabulary vocab_;
  ImageTransform transform_;
  CocoDatasetOptions options_;
  std::vector<std::size_t> caption_index_;              // dataset index -> annotation caption index
  std::vector<std::vector<std::int64_t>> caption_ids_;  // dataset index -> token ids
  std::vector<std::int64_t> image_ids_;
  std::unordered_map<std::int64_t, std::vector<std::size_t>>
      by_image_;                                                 // image id -> dataset indices
  std::unordered_map<std::int64_t, std::int64_t> feature_rows_;  // image id -> row of features
  std::unordered_map<std::int64_t, std::int64_t> mirrored_;      // flip_swap_words, both ways
  struct ImageCache;
  std::shared_ptr<ImageCache> cache_;  // resized images (cache_bytes); shared by copies
};

}  // namespace imcap
