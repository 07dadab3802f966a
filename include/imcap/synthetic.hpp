// A synthetic captioning dataset in COCO format: scenes of coloured shapes, each with five
// differently phrased captions. The built-in demo trains on it; tests use small ones.
//
//   imcap::SyntheticOptions opts;
//   opts.train_images = 2000;
//   auto files = imcap::generate_synthetic_dataset("shapes/", opts);
//   // files.train_annotations == "shapes/captions_train.json", images in "shapes/train/"
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imcap {

/// Options of generate_synthetic_dataset.
struct SyntheticOptions {
  std::size_t train_images = 4000;  ///< images in the training split. Default 4000.
  std::size_t val_images = 400;     ///< images in the held-out split. Default 400.
  int image_size = 64;              ///< side of the square images, pixels. Default 64.
  int max_shapes = 3;               ///< 1 to this many shapes per scene (at most 3). Default 3.
  std::uint64_t seed = 1;           ///< same seed, same dataset. Default 1.
  int jpeg_quality = 92;            ///< JPEG quality 1-100. Default 92.
};

/// Paths of a generated dataset.
struct SyntheticDataset {
  std::string train_annotations;  ///< DIR/captions_train.json
  std::string train_images;       ///< DIR/train
  std::string val_annotations;    ///< DIR/captions_val.json
  std::string val_images;         ///< DIR/val
};

/// One generated scene: the shapes from left to right and the five captions.
struct SyntheticScene {
  struct Shape {
    std::string kind;   ///< circle, square, triangle, diamond or cross
    std::string color;  ///< red, green, blue, yellow, purple, orange, white or black
    std::string size;   ///< small or large
  };
  std::vector<Shape> shapes;
  std::vector<std::string> captions;  ///< five phrasings of the same content
};

/// Draws one scene of size x size RGB pixels (row-major, interleaved) from the generator state
/// `seed`; fills `scene` with its description.
std::vector<std::uint8_t> render_synthetic_scene(std::uint64_t seed, int size, int max_shapes,
                                                 SyntheticScene& scene);

/// Writes DIR/train/*.jpg, DIR/val/*.jpg, DIR/captions_train.json and DIR/captions_val.json.
/// Creates DIR if needed. Throws IoError when it cannot write, InvalidArgument on bad options.
SyntheticDataset generate_synthetic_dataset(const std::string& dir,
                                            const SyntheticOptions& options = {});

}  // namespace imcap
