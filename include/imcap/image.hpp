// Images: decoding (JPEG, PNG, BMP, GIF) to 8-bit RGB, and notebook 1's transforms.
//
//   imcap::Image img = imcap::decode_image("photo.jpg");
//   imcap::ImageTransform eval = imcap::ImageTransform::eval();   // Resize 256, CenterCrop 224
//   torch::Tensor x = eval(img);                                  // [3, 224, 224] float,
//   normalised
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace imcap {

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (height x width x 3).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  ///< width * height * 3 bytes

  bool empty() const { return width == 0 || height == 0; }
  /// Pointer to the pixel at (x, y).
  const std::uint8_t* at(int x, int y) const {
    return pixels.data() + (static_cast<std::size_t>(y) * width + x) * 3;
  }
};

/// Options for decoding.
struct DecodeOptions {
  /// Images with more pixels than this are rejected from their header, before any allocation
  /// (SecurityError). Default 64 megapixels.
  std::uint64_t max_pixels = 64ull * 1000 * 1000;
  /// Files larger than this are rejected before being read (IoError), bytes. Default 256 MiB.
  std::uint64_t max_file_bytes = 256ull << 20;
  /// JPEG only: when > 0, decoding downscales in the DCT domain by the smallest factor of 1/2,
  /// 1/4 or 1/8 that keeps the shorter side >= this many pixels (faster for large JPEGs; the
  /// result then differs slightly from a full decode followed by a resize). 0 (default): full
  /// size.
  int min_shorter_side = 0;
  /// JPEG only: libjpeg reports damaged entropy data (a truncated file, corrupt segments) as a
  /// warning and fills the missing blocks. false (default): such files are rejected with
  /// FormatError. true: they are accepted as decoded.
  bool accept_jpeg_warnings = false;
};

/// Decodes a JPEG, PNG, BMP or GIF (first frame) file to RGB: grayscale and palette images are
/// expanded, alpha is dropped (not composited, as PIL's convert("RGB")), 16-bit samples become
/// 8-bit (high byte), CMYK JPEGs are converted as PIL does. EXIF orientation is not applied (as
/// PIL and torchvision). Throws IoError (unreadable file), FormatError (malformed or unsupported
/// data) or SecurityError (above max_pixels), each naming the file. Thread-safe.
Image decode_image(const std::string& path, const DecodeOptions& options = {});
/// Decodes an image held in memory; `name` is used in error messages.
Image decode_image_memory(const void* data, std::size_t size, const std::string& name,
                          const DecodeOptions& options = {});

/// Resizes so that the shorter side becomes `size` and the longer one int(size * long / short)
/// (torchvision's Resize(int)): bilinear with antialiasing, bit-exact with PIL's
/// Image.resize(BILINEAR) on 8-bit RGB.
Image resize_shorter(const Image& image, int size);
/// Resizes to exactly width x height (bilinear with antialiasing, as PIL).
Image resize(const Image& image, int width, int height);
/// The region of height x width whose top-left corner is (left, top). Throws InvalidArgument
/// when the region does not fit.
Image crop(const Image& image, int top, int left, int height, int width);
/// The centred height x width region (torchvision's CenterCrop rounding: offsets
/// round((size - crop) / 2) with ties to even). Throws InvalidArgument when it does not fit.
Image center_crop(const Image& image, int height, int width);
/// Mirrors left to right.
Image hflip(const Image& image);

/// [3, H, W] float32 tensor with values in [0, 1] (torchvision's ToTensor).
at::Tensor to_tensor(const Image& image);
/// Subtracts mean and divides by std, per channel, on a [3, H, W] or [N, 3, H, W] tensor.
at::Tensor normalize(const at::Tensor& tensor, const std::array<float, 3>& mean,
                     const std::array<float, 3>& std);

/// ImageNet statistics used by torchvision's pretrained models.
inline constexpr std::array<float, 3> kImageNetMean{0.485f, 0.456f, 0.406f};
inline constexpr std::array<float, 3> kImageNetStd{0.229f, 0.224f, 0.225f};

/// Options of the named transforms (notebook 1).
struct TransformOptions {
  int resize = 256;    ///< shorter side after resizing, pixels. Default 256.
  int crop = 224;      ///< side of the square crop, pixels. Default 224.
  bool train = false;  ///< true: random crop + random horizontal flip; false: centre crop.
  /// Chance of a horizontal flip in training. Default 0: a mirrored image keeps a true caption
  /// only when the captions say nothing a mirror changes (text, digits, handedness); the
  /// seed's RandomHorizontalFlip is 0.5 (CocoDatasetOptions::flip_swap_words then swaps
  /// "left" and "right").
  double flip_probability = 0.0;
  std::array<float, 3> mean = kImageNetMean;  ///< per-channel mean for normalisation.
  std::array<float, 3> std = kImageNetStd;    ///< per-channel std for normalisation.
};

/// Resize -> crop -> (flip) -> ToTensor -> Normalize, as the seed's transform_train and
/// transform_test. Stateless and safe to share between threads; randomness comes from the
/// generator passed in.
class ImageTransform {
 public:
  explicit ImageTransform(TransformOptions options = {});
  /// The seed's training transform, Resize(resize) and RandomCrop(crop), without its
  /// RandomHorizontalFlip (see TransformOptions::flip_probability for why, and to turn it on).
  static ImageTransform train(int resize = 256, int crop = 224);
  /// The seed's evaluation transform: Resize(resize), CenterCrop(crop).
  static ImageTransform eval(int resize = 256, int crop = 224);

  /// Applies the transform; rng drives the random crop and flip of the training transform.
  /// `flipped`, when given, is set to whether the image was mirrored.
  at::Tensor operator()(const Image& image, std::mt19937_64& rng, bool* flipped = nullptr) const;
  /// Applies the evaluation transform (throws InvalidArgument for a training transform).
  at::Tensor operator()(const Image& image) const;
  /// The same pipeline, stopping before ToTensor (useful to save or inspect the crop).
  Image apply_to_image(const Image& image, std::mt19937_64& rng) const;
  /// `base` with min_shorter_side set to this transform's resize size, so that JPEGs are
  /// downscaled while decoding as far as the transform allows (the fast path of data loading).
  DecodeOptions fast_decode_options(DecodeOptions base = {}) const;

  const TransformOptions& options() const { return options_; }

 private:
  TransformOptions options_;
};

}  // namespace imcap
