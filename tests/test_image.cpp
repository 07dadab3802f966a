// Image decoding and transforms: every format and mode, malformed files, parity with PIL and
// torchvision (references from tests/python/image_reference.py).
#include <fmt/format.h>
#include <torch/torch.h>
#include "catch.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "detail/resize.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"
#include "support.hpp"

using imcap::DecodeOptions;
using imcap::Image;
using imcap::ImageTransform;
using imcap::TransformOptions;
using imcap::test::TempDir;

namespace {

std::string read_bytes(const std::string& path) { return imcap::test::read_text(path); }

void write_bytes(const std::string& path, const std::string& bytes) {
  imcap::test::write_text(path, bytes);
}

// Reference images and tensors are generated once per test run.
const std::string& reference_dir(const char* mode) {
  static TempDir dir;
  static std::map<std::string, std::string> done;
  auto it = done.find(mode);
  if (it == done.end()) {
    const std::string out = dir.file(mode);
    const auto r = imcap::test::run_python("image_reference.py", {mode, out});
    if (r.exit_code != 0) FAIL("image_reference.py " << mode << " failed: " << r.err);
    it = done.emplace(mode, out).first;
  }
  return it->second;
}

nlohmann::json manifest(const std::string& dir) {
  return nlohmann::json::parse(read_bytes(dir + "/manifest.json"));
}

Image pattern(int w, int h) {
  Image img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  for (std::size_t i = 0; i < img.pixels.size(); ++i)
    img.pixels[i] = static_cast<std::uint8_t>((i * 37 + i / 7) % 256);
  return img;
}

int max_abs_diff(const std::vector<std::uint8_t>& a, const std::string& b) {
  int worst = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::abs(int(a[i]) - int(static_cast<unsigned char>(b[i]))));
  return worst;
}

std::uint32_t crc32(const std::string& data) {
  std::uint32_t crc = 0xffffffffu;
  for (unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::string be32(std::uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

std::string png_chunk(const std::string& type, const std::string& data) {
  return be32(static_cast<std::uint32_t>(data.size())) + type + data + be32(crc32(type + data));
}

// A PNG whose IHDR declares width x height (valid CRC), followed by a tiny IDAT and IEND.
std::string png_header_only(std::uint32_t width, std::uint32_t height) {
  const std::string ihdr = be32(width) + be32(height) + std::string("\x08\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", ihdr) +
         png_chunk("IDAT", std::string("\x78\x9c\x03\x00\x00\x00\x00\x01", 8)) +
         png_chunk("IEND", "");
}

// The offset of the first chunk of `type` in a PNG file.
std::size_t find_png_chunk(const std::string& png, const char* type) {
  std::size_t off = 8;
  while (off + 12 <= png.size()) {
    if (png.compare(off + 4, 4, type) == 0) return off;
    const auto len = (std::size_t(static_cast<unsigned char>(png[off])) << 24) |
                     (std::size_t(static_cast<unsigned char>(png[off + 1])) << 16) |
                     (std::size_t(static_cast<unsigned char>(png[off + 2])) << 8) |
                     std::size_t(static_cast<unsigned char>(png[off + 3]));
    off += 12 + len;
  }
  FAIL("no " << type << " chunk");
  return 0;
}

template <typename E>
void check_throws(const std::string& path, const DecodeOptions& options,
                  const std::string& reason) {
  try {
    imcap::decode_image(path, options);
    FAIL("decoding " << path << " did not throw");
  } catch (const E& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(reason) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("decode_image reads every format and mode as PIL's convert('RGB')", "[image]") {
  const std::string dir = reference_dir("fixtures");
  int jpeg_worst = 0;
  const nlohmann::json files = manifest(dir);
  for (const auto& [name, info] : files.items()) {
    INFO(name);
    const Image img = imcap::decode_image(dir + "/" + name);
    REQUIRE(img.width == info["width"].get<int>());
    REQUIRE(img.height == info["height"].get<int>());
    REQUIRE(img.pixels.size() == std::size_t(img.width) * img.height * 3);
    const std::string expected = read_bytes(dir + "/" + name + ".rgb");
    REQUIRE(expected.size() == img.pixels.size());
    const int diff = max_abs_diff(img.pixels, expected);
    if (info["lossless"].get<bool>()) {
      CHECK(diff == 0);
    } else {
      // The same libjpeg-turbo decodes for PIL; the tolerance covers another JPEG build.
      CHECK(diff <= 2);
      jpeg_worst = std::max(jpeg_worst, diff);
    }
  }
  std::cerr << "[image] JPEG decode vs PIL: max |diff| = " << jpeg_worst << "/255\n";
}

TEST_CASE("decode_image_memory equals decode_image and is thread-safe", "[image]") {
  const std::string dir = reference_dir("fixtures");
  const std::vector<std::string> names{"baseline.jpg", "progressive.jpg", "rgb.png",
                                       "anim.gif",     "rgb.bmp",         "cmyk.jpg"};
  std::vector<Image> expected;
  for (const auto& n : names) expected.push_back(imcap::decode_image(dir + "/" + n));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round)
        for (std::size_t i = 0; i < names.size(); ++i) {
          const std::string data = read_bytes(dir + "/" + names[i]);
          const Image img = imcap::decode_image_memory(data.data(), data.size(), names[i]);
          if (img.pixels != expected[i].pixels) ++mismatches[t];
        }
    });
  for (auto& th : threads) th.join();
  CHECK(mismatches == std::vector<int>(4, 0));
}

TEST_CASE("JPEG decoding downscales in the DCT domain down to min_shorter_side", "[image]") {
  const std::string dir = reference_dir("fixtures");
  const std::string path = dir + "/baseline.jpg";  // 160x120
  const Image full = imcap::decode_image(path);
  DecodeOptions o;
  o.min_shorter_side = 60;  // 1/2: 80x60; 1/4 gives 40x30
  Image scaled = imcap::decode_image(path, o);
  CHECK(scaled.width == 80);
  CHECK(scaled.height == 60);
  const Image reference = imcap::resize(full, 80, 60);
  double total = 0;
  for (std::size_t i = 0; i < scaled.pixels.size(); ++i)
    total += std::abs(int(scaled.pixels[i]) - int(reference.pixels[i]));
  // A 2x2 DCT-domain reduction against a triangle filter, on an image with grain (sigma 12).
  CHECK(total / scaled.pixels.size() < 6.0);
  o.min_shorter_side = 15;  // 1/8: 20x15
  scaled = imcap::decode_image(path, o);
  CHECK(scaled.width == 20);
  CHECK(scaled.height == 15);
  o.min_shorter_side = 61;  // 5/8 would fit but is slower than a full decode: not used
  CHECK(imcap::decode_image(path, o).pixels == full.pixels);
  o.min_shorter_side = 120;
  CHECK(imcap::decode_image(path, o).pixels == full.pixels);
  o.min_shorter_side = 500;  // never upscales
  CHECK(imcap::decode_image(path, o).pixels == full.pixels);
  // PNGs ignore it.
  o.min_shorter_side = 5;
  CHECK(imcap::decode_image(dir + "/rgb.png", o).width == 37);
  CHECK(ImageTransform::eval(256, 224).fast_decode_options().min_shorter_side == 256);
}

TEST_CASE("malformed image files are rejected with errors naming the file", "[image]") {
  const std::string dir = reference_dir("fixtures");
  TempDir tmp;
  const DecodeOptions defaults;

  SECTION("missing file") { check_throws<imcap::IoError>(tmp.file("nope.png"), defaults, ""); }
  SECTION("empty file") {
    write_bytes(tmp.file("empty.jpg"), "");
    check_throws<imcap::FormatError>(tmp.file("empty.jpg"), defaults, "empty file");
  }
  SECTION("text file") {
    write_bytes(tmp.file("notes.png"), "just some text, not an image\n");
    check_throws<imcap::FormatError>(tmp.file("notes.png"), defaults, "unrecognised image format");
  }
  SECTION("random bytes") {
    std::mt19937 rng(7);
    std::string noise(5000, '\0');
    for (auto& c : noise) c = static_cast<char>(rng() & 0xff);
    noise[0] = 0x42;  // not a signature byte
    write_bytes(tmp.file("noise.jpg"), noise);
    check_throws<imcap::FormatError>(tmp.file("noise.jpg"), defaults, "unrecognised image format");
    // A JPEG signature followed by noise.
    noise[0] = '\xff';
    noise[1] = '\xd8';
    noise[2] = '\xff';
    write_bytes(tmp.file("noise2.jpg"), noise);
    check_throws<imcap::FormatError>(tmp.file("noise2.jpg"), defaults, "JPEG");
  }
  SECTION("truncated JPEG") {
    const std::string jpeg = read_bytes(dir + "/baseline.jpg");
    write_bytes(tmp.file("cut.jpg"), jpeg.substr(0, jpeg.size() / 2));
    check_throws<imcap::FormatError>(tmp.file("cut.jpg"), defaults, "corrupt or truncated");
    DecodeOptions lenient;
    lenient.accept_jpeg_warnings = true;
    const Image img = imcap::decode_image(tmp.file("cut.jpg"), lenient);
    CHECK(img.width == 160);
    CHECK(img.height == 120);
    write_bytes(tmp.file("header_only.jpg"), jpeg.substr(0, 40));
    check_throws<imcap::FormatError>(tmp.file("header_only.jpg"), defaults, "JPEG");
  }
  SECTION("truncated progressive JPEG") {
    const std::string jpeg = read_bytes(dir + "/progressive.jpg");
    write_bytes(tmp.file("cut.jpg"), jpeg.substr(0, jpeg.size() * 2 / 3));
    check_throws<imcap::FormatError>(tmp.file("cut.jpg"), defaults, "corrupt or truncated");
  }
  SECTION("truncated PNG") {
    const std::string png = read_bytes(dir + "/rgb.png");
    for (std::size_t keep : {png.size() / 2, std::size_t(20), png.size() - 13}) {
      INFO(keep);
      write_bytes(tmp.file("cut.png"), png.substr(0, keep));
      check_throws<imcap::FormatError>(tmp.file("cut.png"), defaults, "PNG");
    }
  }
  SECTION("PNG chunk past the end of the data") {
    // stb_image would size its IDAT buffer from the declared length before reading any of it.
    std::string png = read_bytes(dir + "/rgb.png");
    const std::size_t idat = find_png_chunk(png, "IDAT");
    png.replace(idat, 4, be32(0x7ffffff0u));
    write_bytes(tmp.file("long_idat.png"), png);
    check_throws<imcap::FormatError>(
        tmp.file("long_idat.png"), defaults,
        fmt::format("chunk 'IDAT' at offset {} declares {} bytes", idat, 0x7ffffff0u));
    png.replace(idat, 4, be32(0x80000000u));
    write_bytes(tmp.file("huge_idat.png"), png);
    check_throws<imcap::FormatError>(tmp.file("huge_idat.png"), defaults, "above the PNG limit");
    const std::string ok = read_bytes(dir + "/rgb.png");
    write_bytes(tmp.file("no_iend.png"), ok.substr(0, find_png_chunk(ok, "IEND")));
    check_throws<imcap::FormatError>(tmp.file("no_iend.png"), defaults, "no IEND chunk");
  }
  SECTION("PNG chunks: IEND without its CRC, unknown ancillary and critical chunks") {
    const std::string png = read_bytes(dir + "/rgb.png");
    const Image want = imcap::decode_image(dir + "/rgb.png");
    const std::size_t iend = find_png_chunk(png, "IEND");
    for (std::size_t keep : {std::size_t(8), std::size_t(10)}) {
      INFO("IEND cut to " << keep << " bytes");
      const std::string cut = png.substr(0, iend + keep);
      CHECK(imcap::decode_image_memory(cut.data(), cut.size(), "cut.png").pixels == want.pixels);
    }
    const std::string ancillary =
        png.substr(0, iend) + png_chunk("zzZz", "anything") + png.substr(iend);
    CHECK(imcap::decode_image_memory(ancillary.data(), ancillary.size(), "a.png").pixels ==
          want.pixels);
    const std::string critical =
        png.substr(0, iend) + png_chunk("ZZZZ", "anything") + png.substr(iend);
    write_bytes(tmp.file("critical.png"), critical);
    check_throws<imcap::FormatError>(
        tmp.file("critical.png"), defaults,
        fmt::format("unknown critical chunk 'ZZZZ' at offset {}", iend));
  }
  SECTION("empty IDAT chunks decode as if absent") {
    // Without UBSan, stb_image's memcpy of 0 bytes into its null buffer does nothing visible: the
    // sanitizer build (CI) is where this section and fuzz/corpus/image/crash-png-* fail if the
    // empty chunks reach stb_image.
    const std::string png = read_bytes(dir + "/rgb.png");
    const Image want = imcap::decode_image(dir + "/rgb.png");
    const std::size_t idat = find_png_chunk(png, "IDAT");
    const std::string empty = png_chunk("IDAT", "");
    // Two before the data (stb_image would copy them into a null buffer), one after it.
    const std::size_t iend = find_png_chunk(png, "IEND");
    const std::string edited = png.substr(0, idat) + empty + empty + png.substr(idat, iend - idat) +
                               empty + png.substr(iend);
    const Image got = imcap::decode_image_memory(edited.data(), edited.size(), "edited.png");
    CHECK(got.width == want.width);
    CHECK(got.height == want.height);
    CHECK(got.pixels == want.pixels);
    // Only empty IDAT chunks: no image data at all.
    const std::string none = png.substr(0, idat) + empty + png.substr(iend);
    CHECK_THROWS_AS(imcap::decode_image_memory(none.data(), none.size(), "none.png"),
                    imcap::FormatError);
  }
  SECTION("truncated BMP") {
    const std::string bmp = read_bytes(dir + "/rgb.bmp");
    write_bytes(tmp.file("cut.bmp"), bmp.substr(0, bmp.size() - 100));
    check_throws<imcap::FormatError>(tmp.file("cut.bmp"), defaults, "truncated BMP");
    write_bytes(tmp.file("cut2.bmp"), bmp.substr(0, 20));
    check_throws<imcap::FormatError>(tmp.file("cut2.bmp"), defaults, "truncated BMP");
  }
  SECTION("PNG header declaring 60000x60000 is rejected before allocation") {
    write_bytes(tmp.file("huge.png"), png_header_only(60000, 60000));
    check_throws<imcap::SecurityError>(tmp.file("huge.png"), defaults, "60000x60000");
    check_throws<imcap::SecurityError>(tmp.file("huge.png"), defaults, "max_pixels");
  }
  SECTION("JPEG header declaring 60000x60000 is rejected before allocation") {
    std::string jpeg = read_bytes(dir + "/baseline.jpg");
    const auto sof = jpeg.find("\xff\xc0");
    REQUIRE(sof != std::string::npos);
    // SOF0: marker, length(2), precision(1), height(2), width(2)
    jpeg[sof + 5] = '\xea';
    jpeg[sof + 6] = '\x60';
    jpeg[sof + 7] = '\xea';
    jpeg[sof + 8] = '\x60';
    write_bytes(tmp.file("huge.jpg"), jpeg);
    check_throws<imcap::SecurityError>(tmp.file("huge.jpg"), defaults, "60000x60000");
  }
  SECTION("max_pixels and max_file_bytes") {
    DecodeOptions o;
    o.max_pixels = 37 * 23;
    CHECK(imcap::decode_image(dir + "/rgb.png", o).width == 37);
    o.max_pixels = 37 * 23 - 1;
    check_throws<imcap::SecurityError>(dir + "/rgb.png", o, "851");
    check_throws<imcap::SecurityError>(dir + "/rgb.bmp", o, "max_pixels");
    check_throws<imcap::SecurityError>(dir + "/anim.gif", o, "max_pixels");
    o.max_pixels = 100;
    check_throws<imcap::SecurityError>(dir + "/baseline.jpg", o, "160x120");
    DecodeOptions small;
    small.max_file_bytes = 100;
    check_throws<imcap::IoError>(dir + "/rgb.png", small, "");
  }
  SECTION("memory buffers name the buffer") {
    try {
      imcap::decode_image_memory("GIF89a", 6, "buffer #3");
      FAIL("no throw");
    } catch (const imcap::FormatError& e) {
      CHECK(std::string(e.what()).find("buffer #3") != std::string::npos);
    }
  }
}

TEST_CASE("top-down BMPs (negative height) decode upright", "[image][bmp]") {
  // rgb.bmp (bottom-up, checked against PIL above) rewritten top-down: the header's height
  // negated and the rows stored in the opposite order. PIL opens both the same way.
  const std::string dir = reference_dir("fixtures");
  const std::string bmp = read_bytes(dir + "/rgb.bmp");
  const Image want = imcap::decode_image(dir + "/rgb.bmp");
  const auto le32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bmp[at + i]);
    return v;
  };
  const std::uint32_t data = le32(10), width = le32(18), height = le32(22);
  const std::uint32_t bpp = le32(28) & 0xFFFF;
  REQUIRE(width == 37);
  REQUIRE(height == 23);
  REQUIRE(le32(30) == 0);  // uncompressed
  const std::size_t stride = (bpp * width + 31) / 32 * 4;
  REQUIRE(bmp.size() >= data + stride * height);
  std::string top_down = bmp;
  const auto put_le32 = [&](std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) top_down[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  };
  put_le32(22, static_cast<std::uint32_t>(-static_cast<std::int32_t>(height)));
  for (std::size_t r = 0; r < height; ++r)
    top_down.replace(data + r * stride, stride, bmp, data + (height - 1 - r) * stride, stride);
  const Image got = imcap::decode_image_memory(top_down.data(), top_down.size(), "top-down.bmp");
  CHECK(got.width == want.width);
  CHECK(got.height == want.height);
  CHECK(got.pixels == want.pixels);

  // A negative width, or a height of zero, is a clear FormatError.
  std::string bad = bmp;
  bad.replace(18, 4, top_down, 22, 4);  // width = -23
  try {
    imcap::decode_image_memory(bad.data(), bad.size(), "bad.bmp");
    FAIL("a BMP with a negative width decoded");
  } catch (const imcap::FormatError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("bad.bmp") != std::string::npos);
    CHECK(std::string(e.what()).find("-23x23") != std::string::npos);
  }
  bad = bmp;
  bad.replace(22, 4, std::string(4, '\0'));
  CHECK_THROWS_AS(imcap::decode_image_memory(bad.data(), bad.size(), "zero.bmp"),
                  imcap::FormatError);
}

TEST_CASE("resize matches torchvision Resize(256) on PIL images", "[image]") {
  const std::string dir = reference_dir("transforms");
  int worst = 0;
  std::size_t pixels = 0;
  const nlohmann::json files = manifest(dir);
  for (const auto& [name, info] : files.items()) {
    INFO(name);
    const Image img = imcap::decode_image(dir + "/" + name);
    const Image resized = imcap::resize_shorter(img, 256);
    CHECK(resized.width == info["resized"][0].get<int>());
    CHECK(resized.height == info["resized"][1].get<int>());
    const std::string expected = read_bytes(dir + "/" + name + ".resize.rgb");
    REQUIRE(expected.size() == resized.pixels.size());
    const int diff = max_abs_diff(resized.pixels, expected);
    CHECK(diff <= 2);
    worst = std::max(worst, diff);
    pixels += resized.pixels.size();
  }
  std::cerr << "[image] resize vs torchvision Resize(256) on PIL: max |diff| = " << worst
            << "/255 over " << pixels << " values\n";
}

TEST_CASE("the eval transform matches torchvision's Resize/CenterCrop/ToTensor/Normalize",
          "[image]") {
  const std::string dir = reference_dir("transforms");
  const ImageTransform eval = ImageTransform::eval();
  double worst = 0;
  const nlohmann::json files = manifest(dir);
  for (const auto& [name, info] : files.items()) {
    INFO(name);
    const Image img = imcap::decode_image(dir + "/" + name);
    const at::Tensor ours = eval(img);
    REQUIRE(ours.sizes() == at::IntArrayRef{3, 224, 224});
    const std::string raw = read_bytes(dir + "/" + name + ".eval.f32");
    REQUIRE(raw.size() == 3 * 224 * 224 * sizeof(float));
    const at::Tensor ref =
        torch::from_blob(const_cast<char*>(raw.data()), {3, 224, 224}, torch::kFloat32).clone();
    // Back to [0, 1] units: the difference in pixel values / 255.
    const at::Tensor stdev = torch::tensor({0.229f, 0.224f, 0.225f}).view({3, 1, 1});
    const double diff = ((ours - ref) * stdev).abs().max().item<double>();
    CHECK(diff <= 2.0 / 255 + 1e-6);
    worst = std::max(worst, diff);
    // The fused path equals the composition of the public steps, bit for bit.
    std::mt19937_64 rng(0);
    const at::Tensor composed = imcap::normalize(imcap::to_tensor(eval.apply_to_image(img, rng)),
                                                 imcap::kImageNetMean, imcap::kImageNetStd);
    CHECK(torch::equal(ours, composed));
    CHECK(torch::equal(
        imcap::to_tensor(imcap::center_crop(imcap::resize_shorter(img, 256), 224, 224)),
        imcap::to_tensor(eval.apply_to_image(img, rng))));
  }
  std::cerr << "[image] eval transform vs torchvision: max |diff| = " << worst * 255 << "/255\n";
}

TEST_CASE("the train transform is a seeded random crop and flip of the resized image", "[image]") {
  const Image img = pattern(300, 200);
  const Image resized = imcap::resize_shorter(img, 64);  // 96x64
  REQUIRE(resized.width == 96);
  imcap::TransformOptions options = ImageTransform::train(64, 48).options();
  CHECK(options.flip_probability == 0.0);  // no flips unless asked for
  options.flip_probability = 0.5;          // the seed's RandomHorizontalFlip
  const ImageTransform train(options);
  std::set<std::pair<int, int>> offsets;
  int flips = 0;
  for (std::uint64_t seed = 0; seed < 40; ++seed) {
    std::mt19937_64 a(seed), b(seed);
    const Image out = train.apply_to_image(img, a);
    REQUIRE(out.width == 48);
    REQUIRE(out.height == 48);
    // Same seed, same tensor; it is the tensor of the same crop.
    const at::Tensor t = train(img, b);
    CHECK(torch::equal(
        t, imcap::normalize(imcap::to_tensor(out), imcap::kImageNetMean, imcap::kImageNetStd)));
    bool found = false;
    for (int top = 0; top <= 64 - 48 && !found; ++top)
      for (int left = 0; left <= 96 - 48 && !found; ++left) {
        const Image c = imcap::crop(resized, top, left, 48, 48);
        if (c.pixels == out.pixels) {
          found = true;
          offsets.insert({top, left});
        } else if (imcap::hflip(c).pixels == out.pixels) {
          found = true;
          offsets.insert({top, left});
          ++flips;
        }
      }
    CHECK(found);
  }
  CHECK(offsets.size() > 20);  // 17 x 49 possible offsets
  CHECK(flips > 5);
  CHECK(flips < 35);

  TransformOptions never;
  never.resize = 64;
  never.crop = 48;
  never.train = true;
  never.flip_probability = 0.0;
  std::mt19937_64 r1(5), r2(5);
  const Image a = ImageTransform(never).apply_to_image(img, r1);
  never.flip_probability = 1.0;
  const Image b = ImageTransform(never).apply_to_image(img, r2);
  CHECK(imcap::hflip(a).pixels == b.pixels);

  // The crop may not be bigger than the resize; the random transform needs a generator.
  never.crop = 65;
  CHECK_THROWS_AS(ImageTransform(never), imcap::InvalidArgument);
  CHECK_THROWS_AS(train(img), imcap::InvalidArgument);
}

TEST_CASE("crops, flips and the 1x1 image", "[image]") {
  const Image img = pattern(7, 5);
  const Image c = imcap::crop(img, 1, 2, 3, 4);
  REQUIRE(c.width == 4);
  REQUIRE(c.height == 3);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x) CHECK(std::memcmp(c.at(x, y), img.at(x + 2, y + 1), 3) == 0);
  // torchvision's rounding: round((5 - 4) / 2) = round(0.5) = 0, round((7 - 4) / 2) = 2,
  // round((7 - 2) / 2) = round(2.5) = 2 (ties to even).
  CHECK(imcap::center_crop(img, 4, 4).pixels == imcap::crop(img, 0, 2, 4, 4).pixels);
  CHECK(imcap::center_crop(img, 2, 2).pixels == imcap::crop(img, 2, 2, 2, 2).pixels);
  CHECK(imcap::center_crop(img, 5, 1).pixels == imcap::crop(img, 0, 3, 5, 1).pixels);
  const Image f = imcap::hflip(img);
  CHECK(std::memcmp(f.at(0, 3), img.at(6, 3), 3) == 0);
  CHECK(imcap::hflip(f).pixels == img.pixels);

  CHECK_THROWS_AS(imcap::crop(img, -1, 0, 2, 2), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::crop(img, 0, 6, 2, 2), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::crop(img, 4, 0, 2, 2), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::crop(img, 0, 0, 0, 2), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::center_crop(img, 6, 2), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::resize(img, 0, 3), imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::resize(Image{}, 3, 3), imcap::InvalidArgument);
  try {
    imcap::crop(img, 0, 6, 2, 2);
  } catch (const imcap::InvalidArgument& e) {
    CHECK(std::string(e.what()).find("7x5") == std::string::npos);
    CHECK(std::string(e.what()).find("5x7") != std::string::npos);
  }

  const std::string dir = reference_dir("fixtures");
  const Image one = imcap::decode_image(dir + "/one.png");
  REQUIRE(one.width == 1);
  const Image big = imcap::resize_shorter(one, 256);
  CHECK(big.width == 256);
  CHECK(big.height == 256);
  CHECK(std::all_of(big.pixels.begin(), big.pixels.end(),
                    [&, i = 0](std::uint8_t v) mutable { return v == one.pixels[i++ % 3]; }));
  const at::Tensor t = imcap::to_tensor(one);
  CHECK(t.sizes() == at::IntArrayRef{3, 1, 1});
  CHECK(t[0][0][0].item<float>() == 200.0f / 255.0f);
  CHECK(t[1][0][0].item<float>() == 17.0f / 255.0f);
  const at::Tensor n = imcap::normalize(t.unsqueeze(0), {0.5f, 0.5f, 0.5f}, {0.5f, 0.25f, 1.0f});
  CHECK(n.sizes() == at::IntArrayRef{1, 3, 1, 1});
  CHECK(n[0][1][0][0].item<float>() == Approx((17.0 / 255 - 0.5) / 0.25));
  CHECK_THROWS_AS(imcap::normalize(torch::zeros({2, 4, 4}), {0, 0, 0}, {1, 1, 1}),
                  imcap::InvalidArgument);
  CHECK_THROWS_AS(imcap::normalize(t, {0, 0, 0}, {1, 0, 1}), imcap::InvalidArgument);
}

TEST_CASE("the SIMD horizontal resize gives the scalar loop's bytes", "[image]") {
  // 3, 5, 7 and 9 taps (up to 1x, 2x, 3x and 4x smaller), odd sizes, and windows that end at
  // the last byte of the image (its right edge on its last row).
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> byte(0, 255);
  struct Case {
    int width, height, out_width, out_height;
  };
  const Case cases[] = {{13, 7, 20, 9},       {40, 30, 21, 17}, {97, 61, 33, 29},
                        {640, 480, 341, 256}, {101, 3, 26, 3},  {40, 8, 10, 8}};
  bool& simd = imcap::detail::resize_simd_enabled();
  for (const Case& c : cases) {
    INFO(c.width << "x" << c.height << " -> " << c.out_width << "x" << c.out_height);
    Image img;
    img.width = c.width;
    img.height = c.height;
    img.pixels.resize(static_cast<std::size_t>(c.width) * c.height * 3);
    for (auto& p : img.pixels) p = static_cast<std::uint8_t>(byte(rng));
    simd = false;
    const Image scalar = imcap::resize(img, c.out_width, c.out_height);
    simd = true;
    const Image fast = imcap::resize(img, c.out_width, c.out_height);
    CHECK(fast.pixels == scalar.pixels);
    // Saturated values too: all 255 stays 255.
    std::fill(img.pixels.begin(), img.pixels.end(), std::uint8_t{255});
    const Image white = imcap::resize(img, c.out_width, c.out_height);
    CHECK(std::all_of(white.pixels.begin(), white.pixels.end(),
                      [](std::uint8_t v) { return v == 255; }));
  }
  simd = true;
}
