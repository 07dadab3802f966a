// Image transforms (notebook 1): PIL's antialiased bilinear resize, crops, flip, ToTensor and
// Normalize, and the train/eval presets built from them.
#include "imcap/image.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "detail/resize.hpp"
#include "imcap/error.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define IMCAP_X86_RESIZE 1
#endif

namespace imcap {
namespace detail {

bool& resize_simd_enabled() {
  static bool enabled = true;
  return enabled;
}

}  // namespace detail

namespace {

// PIL's fixed-point resampling (Pillow's libImaging/Resample.c, 8 bits per channel): weights in
// double, normalised to sum 1, then rounded to integers with kPrecisionBits fractional bits.
constexpr int kPrecisionBits = 32 - 8 - 2;

// The taps of a 1-D antialiased bilinear (triangle) filter from in_size samples to out_size.
struct Taps {
  int max_taps = 0;
  std::vector<int> first;    // [out_size] first input index
  std::vector<int> count;    // [out_size] number of taps
  std::vector<int> weights;  // [out_size * max_taps] fixed-point weights
};

Taps bilinear_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // the triangle filter's support is 1
  Taps t;
  t.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<std::size_t>(out_size) * t.max_taps, 0);
  std::vector<double> k(t.max_taps);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double d = std::abs((x + xmin - center + 0.5) * ss);
      const double w = d < 1.0 ? 1.0 - d : 0.0;
      k[x] = w;
      ww += w;
    }
    int* out = &t.weights[static_cast<std::size_t>(xx) * t.max_taps];
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      out[x] = static_cast<int>(w < 0 ? -0.5 + w * (1 << kPrecisionBits)
                                      : 0.5 + w * (1 << kPrecisionBits));
    }
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

inline std::uint8_t clip8(int v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

constexpr int kHalf = 1 << (kPrecisionBits - 1);

// The horizontal pass, any number of taps.
void horizontal_pass(const Image& in, const Taps& ht, int row0, int rows, int x0, int cw,
                     std::uint8_t* out) {
  const std::size_t in_stride = static_cast<std::size_t>(in.width) * 3;
  for (int r = 0; r < rows; ++r) {
    const std::uint8_t* src = in.pixels.data() + (row0 + r) * in_stride;
    std::uint8_t* dst = out + static_cast<std::size_t>(r) * cw * 3;
    for (int x = 0; x < cw; ++x) {
      const int xx = x0 + x;
      const int* k = &ht.weights[static_cast<std::size_t>(xx) * ht.max_taps];
      const std::uint8_t* s = src + static_cast<std::size_t>(ht.first[xx]) * 3;
      int s0 = kHalf, s1 = kHalf, s2 = kHalf;
      for (int i = 0, n = ht.count[xx]; i < n; ++i) {
        s0 += s[i * 3 + 0] * k[i];
        s1 += s[i * 3 + 1] * k[i];
        s2 += s[i * 3 + 2] * k[i];
      }
      dst[x * 3 + 0] = clip8(s0);
      dst[x * 3 + 1] = clip8(s1);
      dst[x * 3 + 2] = clip8(s2);
    }
  }
}

// The same with exactly N taps per output pixel: each window is moved inside the image and its
// weights shifted (the extra taps get weight 0, so the sums are unchanged), which lets the
// compiler unroll the taps.
// One output pixel of the N-tap horizontal pass, in plain C++.
template <int N>
void horizontal_pixel(const std::uint8_t* s, const int* k, std::uint8_t* dst) {
  int s0 = kHalf, s1 = kHalf, s2 = kHalf;
  for (int i = 0; i < N; ++i) {
    s0 += s[i * 3 + 0] * k[i];
    s1 += s[i * 3 + 1] * k[i];
    s2 += s[i * 3 + 2] * k[i];
  }
  dst[0] = clip8(s0);
  dst[1] = clip8(s1);
  dst[2] = clip8(s2);
}

#ifdef IMCAP_X86_RESIZE
bool have_sse41() {
  static const bool yes = __builtin_cpu_supports("sse4.1");
  return yes;
}

// One row of the N-tap horizontal pass with SSE4.1: a pixel's three channels (and the next
// byte, whose lane is dropped) in four 32-bit lanes, one multiply-add per tap. The integer sums
// are the scalar loop's, and packing with saturation after the shift is clip8, so the bytes are
// the same. Pixels whose last 4-byte load would pass the end of the buffer (`readable` bytes
// from src) are done by the scalar loop.
template <int N>
__attribute__((target("sse4.1"))) void horizontal_row_sse41(const std::uint8_t* src,
                                                            std::size_t readable, const int* first,
                                                            const int* weights, int cw,
                                                            std::uint8_t* dst) {
  const int* k = weights;
  for (int x = 0; x < cw; ++x, k += N) {
    const std::uint8_t* s = src + first[x];
    if (static_cast<std::size_t>(first[x]) + 3 * (N - 1) + 4 > readable) {
      horizontal_pixel<N>(s, k, dst + x * 3);
      continue;
    }
    __m128i acc = _mm_set1_epi32(kHalf);
    for (int i = 0; i < N; ++i) {
      std::int32_t bytes = 0;
      std::memcpy(&bytes, s + i * 3, sizeof bytes);
      const __m128i pixel = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(bytes));
      acc = _mm_add_epi32(acc, _mm_mullo_epi32(pixel, _mm_set1_epi32(k[i])));
    }
    const __m128i shifted = _mm_srai_epi32(acc, kPrecisionBits);
    const __m128i words = _mm_packs_epi32(shifted, shifted);
    const std::int32_t packed = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
    std::memcpy(dst + x * 3, &packed, 3);
  }
}
#endif

template <int N>
void horizontal_pass_n(const Image& in, const Taps& ht, int row0, int rows, int x0, int cw,
                       std::uint8_t* out) {
  std::vector<int> first(cw);
  std::vector<int> weights(static_cast<std::size_t>(cw) * N, 0);
  for (int x = 0; x < cw; ++x) {
    const int xx = x0 + x;
    const int f = std::min(ht.first[xx], in.width - N);
    first[x] = f * 3;
    for (int i = 0; i < ht.count[xx]; ++i)
      weights[static_cast<std::size_t>(x) * N + (ht.first[xx] - f) + i] =
          ht.weights[static_cast<std::size_t>(xx) * ht.max_taps + i];
  }
  const std::size_t in_stride = static_cast<std::size_t>(in.width) * 3;
#ifdef IMCAP_X86_RESIZE
  if (have_sse41() && detail::resize_simd_enabled()) {
    for (int r = 0; r < rows; ++r) {
      const std::size_t offset = (row0 + r) * in_stride;
      horizontal_row_sse41<N>(in.pixels.data() + offset, in.pixels.size() - offset, first.data(),
                              weights.data(), cw, out + static_cast<std::size_t>(r) * cw * 3);
    }
    return;
  }
#endif
  for (int r = 0; r < rows; ++r) {
    const std::uint8_t* src = in.pixels.data() + (row0 + r) * in_stride;
    std::uint8_t* dst = out + static_cast<std::size_t>(r) * cw * 3;
    const int* k = weights.data();
    for (int x = 0; x < cw; ++x, k += N) horizontal_pixel<N>(src + first[x], k, dst + x * 3);
  }
}

bool horizontal_pass_fixed(const Image& in, const Taps& ht, int row0, int rows, int x0, int cw,
                           std::uint8_t* out) {
  switch (ht.max_taps) {
    case 3:
      horizontal_pass_n<3>(in, ht, row0, rows, x0, cw, out);
      return true;
    case 5:
      horizontal_pass_n<5>(in, ht, row0, rows, x0, cw, out);
      return true;
    case 7:
      horizontal_pass_n<7>(in, ht, row0, rows, x0, cw, out);
      return true;
    case 9:
      horizontal_pass_n<9>(in, ht, row0, rows, x0, cw, out);
      return true;
    default:
      return false;
  }
}

// Resizes `in` to out_w x out_h as PIL does, but computes only the output region
// [x0, x0 + cw) x [y0, y0 + ch): each output pixel is the same as in the full resize (PIL's
// horizontal pass, rounded to uint8, then the vertical pass), so crops after a resize need not
// compute the discarded pixels.
Image resize_region(const Image& in, int out_w, int out_h, int x0, int y0, int cw, int ch) {
  Image out;
  out.width = cw;
  out.height = ch;
  out.pixels.resize(static_cast<std::size_t>(cw) * ch * 3);
  if (cw == 0 || ch == 0) return out;
  const bool need_h = out_w != in.width;
  const bool need_v = out_h != in.height;
  const std::size_t in_stride = static_cast<std::size_t>(in.width) * 3;

  // Horizontal pass over the source rows that the output rows need.
  Taps vt;
  int row0 = y0, row1 = y0 + ch;  // source rows used
  if (need_v) {
    vt = bilinear_taps(in.height, out_h);
    row0 = vt.first[y0];
    row1 = 0;
    for (int y = y0; y < y0 + ch; ++y) row1 = std::max(row1, vt.first[y] + vt.count[y]);
  }
  const int rows = row1 - row0;
  std::vector<std::uint8_t> temp;
  const std::uint8_t* hsrc = nullptr;  // rows [row0, row1) of the horizontally resized image
  std::size_t hstride = static_cast<std::size_t>(cw) * 3;
  if (need_h) {
    const Taps ht = bilinear_taps(in.width, out_w);
    temp.resize(static_cast<std::size_t>(rows) * cw * 3);
    const bool fixed =
        ht.max_taps <= in.width && horizontal_pass_fixed(in, ht, row0, rows, x0, cw, temp.data());
    if (!fixed) horizontal_pass(in, ht, row0, rows, x0, cw, temp.data());
    hsrc = temp.data();
  } else {
    hsrc = in.pixels.data() + row0 * in_stride + static_cast<std::size_t>(x0) * 3;
    hstride = in_stride;
  }

  if (!need_v) {
    for (int y = 0; y < ch; ++y)
      std::copy_n(hsrc + y * hstride, static_cast<std::size_t>(cw) * 3,
                  out.pixels.data() + static_cast<std::size_t>(y) * cw * 3);
    return out;
  }
  std::vector<int> acc(static_cast<std::size_t>(cw) * 3);
  for (int y = 0; y < ch; ++y) {
    const int yy = y0 + y;
    const int* k = &vt.weights[static_cast<std::size_t>(yy) * vt.max_taps];
    const int first = vt.first[yy] - row0;
    std::fill(acc.begin(), acc.end(), kHalf);
    // Row by row so that the inner loop runs over contiguous bytes (vectorisable).
    for (int i = 0, n = vt.count[yy]; i < n; ++i) {
      const std::uint8_t* s = hsrc + (first + i) * hstride;
      const int w = k[i];
      for (int j = 0; j < cw * 3; ++j) acc[j] += s[j] * w;
    }
    std::uint8_t* dst = out.pixels.data() + static_cast<std::size_t>(y) * cw * 3;
    for (int j = 0; j < cw * 3; ++j) dst[j] = clip8(acc[j]);
  }
  return out;
}

void check_image(const Image& image, const char* what) {
  if (image.empty() || image.width < 0 || image.height < 0 ||
      image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3)
    throw InvalidArgument(
        fmt::format("{}: expected a non-empty RGB image with width * height * 3 "
                    "bytes, got {}x{} with {} bytes",
                    what, image.width, image.height, image.pixels.size()));
}

// torchvision's Resize(int) output size: the shorter side becomes `size`, the longer one
// int(size * long / short) (Python's true division, then truncation).
std::pair<int, int> shorter_side_size(int width, int height, int size) {
  const int shorter = std::min(width, height), longer = std::max(width, height);
  const int new_long =
      static_cast<int>(static_cast<double>(size) * longer / static_cast<double>(shorter));
  return width <= height ? std::make_pair(size, new_long) : std::make_pair(new_long, size);
}

std::pair<int, int> center_offsets(int height, int width, int crop_h, int crop_w) {
  // Python's round() rounds halves to even, as std::nearbyint does in the default mode.
  return {static_cast<int>(std::nearbyint((height - crop_h) / 2.0)),
          static_cast<int>(std::nearbyint((width - crop_w) / 2.0))};
}

// Uniform integer in [0, n) by rejection, identical on every platform (std's distributions are
// implementation-defined).
int uniform_below(std::mt19937_64& rng, int n) {
  const std::uint64_t range = static_cast<std::uint64_t>(n);
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % range;
  std::uint64_t v;
  do v = rng();
  while (v >= limit);
  return static_cast<int>(v % range);
}

double uniform_unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

void check_crop_fits(const Image& image, int top, int left, int height, int width,
                     const char* what) {
  if (height <= 0 || width <= 0 || top < 0 || left < 0 || top > image.height - height ||
      left > image.width - width)
    throw InvalidArgument(fmt::format(
        "{}: region of {}x{} (height x width) at top {}, left {} does not fit in a {}x{} image",
        what, height, width, top, left, image.height, image.width));
}

}  // namespace

Image resize(const Image& image, int width, int height) {
  check_image(image, "resize");
  if (width <= 0 || height <= 0)
    throw InvalidArgument(
        fmt::format("resize: expected a positive target size, got {}x{}", width, height));
  return resize_region(image, width, height, 0, 0, width, height);
}

Image resize_shorter(const Image& image, int size) {
  check_image(image, "resize_shorter");
  if (size <= 0)
    throw InvalidArgument(fmt::format("resize_shorter: expected a positive size, got {}", size));
  const auto [w, h] = shorter_side_size(image.width, image.height, size);
  return resize_region(image, w, h, 0, 0, w, h);
}

Image crop(const Image& image, int top, int left, int height, int width) {
  check_image(image, "crop");
  check_crop_fits(image, top, left, height, width, "crop");
  Image out;
  out.width = width;
  out.height = height;
  out.pixels.resize(static_cast<std::size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y)
    std::copy_n(image.at(left, top + y), static_cast<std::size_t>(width) * 3,
                out.pixels.data() + static_cast<std::size_t>(y) * width * 3);
  return out;
}

Image center_crop(const Image& image, int height, int width) {
  check_image(image, "center_crop");
  if (height <= 0 || width <= 0 || height > image.height || width > image.width)
    throw InvalidArgument(
        fmt::format("center_crop: a {}x{} crop (height x width) does not fit "
                    "in a {}x{} image",
                    height, width, image.height, image.width));
  const auto [top, left] = center_offsets(image.height, image.width, height, width);
  return crop(image, top, left, height, width);
}

Image hflip(const Image& image) {
  check_image(image, "hflip");
  Image out = image;
  for (int y = 0; y < image.height; ++y) {
    std::uint8_t* row = out.pixels.data() + static_cast<std::size_t>(y) * image.width * 3;
    const std::uint8_t* src = image.at(0, y);
    for (int x = 0; x < image.width; ++x)
      std::copy_n(src + static_cast<std::size_t>(image.width - 1 - x) * 3, 3, row + x * 3);
  }
  return out;
}

at::Tensor to_tensor(const Image& image) {
  check_image(image, "to_tensor");
  const int h = image.height, w = image.width;
  at::Tensor out = torch::empty({3, h, w}, torch::kFloat32);
  float* dst = out.data_ptr<float>();
  const std::size_t plane = static_cast<std::size_t>(h) * w;
  const std::uint8_t* src = image.pixels.data();
  for (std::size_t i = 0; i < plane; ++i) {
    // Division, not multiplication by 1/255: bit-exact with ToTensor's div(255).
    dst[i] = static_cast<float>(src[i * 3 + 0]) / 255.0f;
    dst[plane + i] = static_cast<float>(src[i * 3 + 1]) / 255.0f;
    dst[2 * plane + i] = static_cast<float>(src[i * 3 + 2]) / 255.0f;
  }
  return out;
}

at::Tensor normalize(const at::Tensor& tensor, const std::array<float, 3>& mean,
                     const std::array<float, 3>& std) {
  const bool batched = tensor.dim() == 4;
  if (!(tensor.dim() == 3 || batched) || tensor.size(batched ? 1 : 0) != 3)
    throw InvalidArgument(
        fmt::format("normalize: expected a [3, H, W] or [N, 3, H, W] tensor, "
                    "got {}",
                    fmt::join(tensor.sizes(), "x")));
  for (int c = 0; c < 3; ++c)
    if (!(std[c] != 0.0f) || !std::isfinite(std[c]) || !std::isfinite(mean[c]))
      throw InvalidArgument(
          fmt::format("normalize: std[{}] = {} and mean[{}] = {}: expected "
                      "finite values and a non-zero std",
                      c, std[c], c, mean[c]));
  const auto shape = batched ? std::vector<int64_t>{1, 3, 1, 1} : std::vector<int64_t>{3, 1, 1};
  const auto opts = torch::TensorOptions().dtype(tensor.scalar_type()).device(tensor.device());
  const at::Tensor m = torch::tensor({mean[0], mean[1], mean[2]}).to(opts).view(shape);
  const at::Tensor s = torch::tensor({std[0], std[1], std[2]}).to(opts).view(shape);
  return (tensor - m) / s;
}

ImageTransform::ImageTransform(TransformOptions options) : options_(options) {
  const auto& o = options_;
  if (o.resize <= 0 || o.crop <= 0 || o.crop > o.resize)
    throw InvalidArgument(
        fmt::format("ImageTransform: expected 0 < crop <= resize, got resize {} "
                    "and crop {}",
                    o.resize, o.crop));
  if (!(o.flip_probability >= 0.0 && o.flip_probability <= 1.0))
    throw InvalidArgument(fmt::format("ImageTransform: flip_probability must be in [0, 1], got {}",
                                      o.flip_probability));
  for (int c = 0; c < 3; ++c)
    if (!(o.std[c] != 0.0f) || !std::isfinite(o.std[c]) || !std::isfinite(o.mean[c]))
      throw InvalidArgument(
          fmt::format("ImageTransform: std[{}] = {} and mean[{}] = {}: "
                      "expected finite values and a non-zero std",
                      c, o.std[c], c, o.mean[c]));
}

ImageTransform ImageTransform::train(int resize, int crop) {
  TransformOptions o;
  o.resize = resize;
  o.crop = crop;
  o.train = true;
  return ImageTransform(o);
}

ImageTransform ImageTransform::eval(int resize, int crop) {
  TransformOptions o;
  o.resize = resize;
  o.crop = crop;
  o.train = false;
  return ImageTransform(o);
}

DecodeOptions ImageTransform::fast_decode_options(DecodeOptions base) const {
  base.min_shorter_side = options_.resize;
  return base;
}

namespace {

// The crop of the transform on an image of the given size, and whether to flip; draws from rng
// in torchvision's order (crop top, crop left, then the flip).
struct Plan {
  int resized_w = 0, resized_h = 0, top = 0, left = 0;
  bool flip = false;
};

Plan make_plan(const TransformOptions& o, const Image& image, std::mt19937_64* rng) {
  Plan p;
  std::tie(p.resized_w, p.resized_h) = shorter_side_size(image.width, image.height, o.resize);
  if (o.crop > p.resized_w || o.crop > p.resized_h)
    throw InvalidArgument(
        fmt::format("ImageTransform: crop {} does not fit in the {}x{} resized "
                    "image",
                    o.crop, p.resized_w, p.resized_h));
  if (o.train) {
    p.top = uniform_below(*rng, p.resized_h - o.crop + 1);
    p.left = uniform_below(*rng, p.resized_w - o.crop + 1);
    p.flip = uniform_unit(*rng) < o.flip_probability;
  } else {
    std::tie(p.top, p.left) = center_offsets(p.resized_h, p.resized_w, o.crop, o.crop);
  }
  return p;
}

Image run_plan(const TransformOptions& o, const Image& image, const Plan& p) {
  return resize_region(image, p.resized_w, p.resized_h, p.left, p.top, o.crop, o.crop);
}

}  // namespace

Image ImageTransform::apply_to_image(const Image& image, std::mt19937_64& rng) const {
  check_image(image, "ImageTransform");
  const Plan p = make_plan(options_, image, &rng);
  Image out = run_plan(options_, image, p);
  return p.flip ? hflip(out) : out;
}

at::Tensor ImageTransform::operator()(const Image& image, std::mt19937_64& rng,
                                      bool* flipped) const {
  check_image(image, "ImageTransform");
  const Plan p = make_plan(options_, image, options_.train ? &rng : nullptr);
  if (flipped != nullptr) *flipped = p.flip;
  const Image cropped = run_plan(options_, image, p);
  // ToTensor + Normalize through a per-channel table: the same float operations as torchvision
  // (x / 255, then (x - mean) / std), so the values are bit-identical.
  float lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v)
      lut[c][v] = (static_cast<float>(v) / 255.0f - options_.mean[c]) / options_.std[c];
  const int n = options_.crop;
  at::Tensor out = torch::empty({3, n, n}, torch::kFloat32);
  float* dst = out.data_ptr<float>();
  const std::size_t plane = static_cast<std::size_t>(n) * n;
  for (int y = 0; y < n; ++y) {
    const std::uint8_t* row = cropped.at(0, y);
    float* d0 = dst + static_cast<std::size_t>(y) * n;
    float* d1 = d0 + plane;
    float* d2 = d1 + plane;
    for (int x = 0; x < n; ++x) {
      const int sx = p.flip ? n - 1 - x : x;
      d0[x] = lut[0][row[sx * 3 + 0]];
      d1[x] = lut[1][row[sx * 3 + 1]];
      d2[x] = lut[2][row[sx * 3 + 2]];
    }
  }
  return out;
}

at::Tensor ImageTransform::operator()(const Image& image) const {
  if (options_.train)
    throw InvalidArgument(
        "ImageTransform: the training transform is random; pass a std::mt19937_64 generator");
  std::mt19937_64 unused;
  return (*this)(image, unused);
}

}  // namespace imcap
