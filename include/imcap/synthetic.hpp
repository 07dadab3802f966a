// Synthetic captioning datasets in COCO format, each image with five differently phrased
// captions. Each kind's captions depend on other visual facts: the built-in demo trains on
// `shapes`; the other kinds check that training defaults hold on data they were not shaped on.
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

/// What the scenes show and what their captions depend on.
enum class SyntheticKind {
  kShapes,     ///< 1-3 shapes left to right: kind, colour and size ("a small red circle and ...")
  kCounts,     ///< one or two groups of identical shapes: how many ("two red circles and one ...")
  kRelations,  ///< two shapes and where one is of the other ("a red circle above a blue square")
  kGlyphs,     ///< 1-3 coloured letters and digits of a bitmap font: which ("a red letter k")
  kTextures,   ///< 1-2 shapes filled with a pattern ("a striped red circle and a dotted ...")
};
/// Parses "shapes", "counts", "relations", "glyphs" or "textures"; throws InvalidArgument.
SyntheticKind parse_synthetic_kind(const std::string& name);
/// The name parse_synthetic_kind accepts.
std::string to_string(SyntheticKind kind);

/// Options of generate_synthetic_dataset.
struct SyntheticOptions {
  SyntheticKind kind = SyntheticKind::kShapes;  ///< what the scenes show. Default shapes.
  std::size_t train_images = 4000;              ///< images in the training split. Default 4000.
  std::size_t val_images = 400;                 ///< images in the held-out split. Default 400.
  int image_size = 64;                          ///< side of the square images, pixels. Default 64.
  int max_shapes = 3;      ///< shapes: 1 to this many shapes per scene (at most 3). Default 3.
  std::uint64_t seed = 1;  ///< same seed, same dataset. Default 1.
  int jpeg_quality = 92;   ///< JPEG quality 1-100. Default 92.
};

/// Paths of a generated dataset.
struct SyntheticDataset {
  std::string train_annotations;  ///< DIR/captions_train.json
  std::string train_images;       ///< DIR/train
  std::string val_annotations;    ///< DIR/captions_val.json
  std::string val_images;         ///< DIR/val
};

/// One generated scene: the things drawn, in the order the first caption names them, and the
/// five captions.
struct SyntheticScene {
  struct Shape {
    std::string kind;   ///< circle, square, triangle, diamond or cross; a glyph's character
    std::string color;  ///< red, green, blue, yellow, purple, orange, white or black
    std::string size;   ///< small or large; a texture's pattern; empty for counts and glyphs
  };
  std::vector<Shape> shapes;
  std::vector<std::string> captions;  ///< five phrasings of the same content
};

/// Draws one scene of size x size RGB pixels (row-major, interleaved) from the generator state
/// `seed`; fills `scene` with its description.
std::vector<std::uint8_t> render_synthetic_scene(std::uint64_t seed, int size, int max_shapes,
                                                 SyntheticScene& scene);
/// The same for a scene of options.kind (options.image_size pixels).
std::vector<std::uint8_t> render_synthetic_scene(std::uint64_t seed,
                                                 const SyntheticOptions& options,
                                                 SyntheticScene& scene);

/// Writes DIR/train/*.jpg, DIR/val/*.jpg, DIR/captions_train.json and DIR/captions_val.json.
/// Creates DIR if needed. Throws IoError when it cannot write, InvalidArgument on bad options.
SyntheticDataset generate_synthetic_dataset(const std::string& dir,
                                            const SyntheticOptions& options = {});

}  // namespace imcap
