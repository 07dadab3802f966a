#include "cli/pictures.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_easy_font.h>
#include <stb_image_write.h>

#include "imcap/error.hpp"

namespace imcap::cli {

std::string base64(const std::string& bytes) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto n = (static_cast<unsigned char>(bytes[i]) << 16) |
                   (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                   static_cast<unsigned char>(bytes[i + 2]);
    out += {k[(n >> 18) & 63], k[(n >> 12) & 63], k[(n >> 6) & 63], k[n & 63]};
  }
  if (i + 1 == bytes.size()) {
    const auto n = static_cast<unsigned char>(bytes[i]) << 16;
    out += {k[(n >> 18) & 63], k[(n >> 12) & 63], '=', '='};
  } else if (i + 2 == bytes.size()) {
    const auto n = (static_cast<unsigned char>(bytes[i]) << 16) |
                   (static_cast<unsigned char>(bytes[i + 1]) << 8);
    out += {k[(n >> 18) & 63], k[(n >> 12) & 63], k[(n >> 6) & 63], '='};
  }
  return out;
}

std::string html_escape(const std::string& text) {
  std::string o;
  for (const char c : text) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

std::string encode_png(const Image& image) {
  if (image.empty() || image.pixels.size() != static_cast<std::size_t>(image.width) *
                                                  static_cast<std::size_t>(image.height) * 3)
    throw InvalidArgument(fmt::format(
        "encode_png: expected a {}x{} RGB image with {} bytes, got {}", image.width, image.height,
        3ull * static_cast<unsigned long long>(image.width) *
            static_cast<unsigned long long>(image.height),
        image.pixels.size()));
  std::string out;
  const auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                               static_cast<std::size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &out, image.width, image.height, 3, image.pixels.data(),
                              image.width * 3))
    throw Error(
        fmt::format("encode_png: could not encode a {}x{} image", image.width, image.height));
  return out;
}

Image model_view(const Image& image, const TransformOptions& transform, int side) {
  // The crop covers crop/resize of the shorter side; scaling the shorter side to
  // side * resize / crop makes that crop `side` pixels wide.
  const int shorter =
      transform.resize > 0 && transform.crop > 0
          ? std::max(side, static_cast<int>(std::lround(static_cast<double>(side) *
                                                        transform.resize / transform.crop)))
          : side;
  return center_crop(resize_shorter(image, shorter), side, side);
}

namespace {

constexpr int kLabelHeight = 26;  // the band above each tile that holds its word
constexpr int kGap = 4;

int grid_side(const torch::Tensor& attention, const char* what) {
  const auto cells = attention.dim() == 2 ? attention.size(1) : -1;
  const auto side = static_cast<std::int64_t>(std::lround(std::sqrt(static_cast<double>(cells))));
  if (cells <= 0 || side * side != cells)
    throw InvalidArgument(fmt::format("{}: expected attention weights [words, S * S], got [{}]",
                                      what, fmt::join(attention.sizes(), ", ")));
  return static_cast<int>(side);
}

// Each word's weights over the cells as an S x S grid scaled to [0, 1] by its maximum.
torch::Tensor normalised_grids(const torch::Tensor& attention, int s) {
  const torch::Tensor a = attention.to(torch::kCPU, torch::kFloat).contiguous();
  const torch::Tensor top = std::get<0>(a.max(1, /*keepdim=*/true)).clamp_min(1e-12);
  return (a / top).reshape({a.size(0), s, s});
}

// Draws `text` (ASCII; other bytes are skipped) at (x, y) in black, `scale` pixels per font unit.
void draw_text(Image& image, const std::string& text, int x, int y, int scale) {
  std::string ascii;
  for (const char c : text)
    if (c >= 32 && c < 127) ascii += c;
  std::vector<char> buffer(ascii.size() * 300 + 64);
  const int quads = stb_easy_font_print(0, 0, ascii.data(), nullptr, buffer.data(),
                                        static_cast<int>(buffer.size()));
  for (int q = 0; q < quads; ++q) {
    float v[4][4];  // x, y, z, colour of the quad's corners
    std::memcpy(v, buffer.data() + static_cast<std::size_t>(q) * sizeof v, sizeof v);
    const int x0 = x + static_cast<int>(std::lround(v[0][0] * scale));
    const int y0 = y + static_cast<int>(std::lround(v[0][1] * scale));
    const int x1 = x + static_cast<int>(std::lround(v[2][0] * scale));
    const int y1 = y + static_cast<int>(std::lround(v[2][1] * scale));
    for (int py = std::max(0, y0); py < std::min(image.height, y1); ++py)
      for (int px = std::max(0, x0); px < std::min(image.width, x1); ++px)
        std::memset(image.pixels.data() + (static_cast<std::size_t>(py) * image.width + px) * 3, 0,
                    3);
  }
}

}  // namespace

Image attention_strip(const Image& view, const torch::Tensor& attention,
                      const std::vector<std::string>& words, int columns) {
  const int s = grid_side(attention, "attention_strip");
  if (static_cast<std::size_t>(attention.size(0)) != words.size() || words.empty())
    throw InvalidArgument(
        fmt::format("attention_strip: expected one row of weights per word ({} "
                    "words), got {}",
                    words.size(), attention.size(0)));
  if (view.empty()) throw InvalidArgument("attention_strip: empty view");
  const int n = static_cast<int>(words.size());
  const int cols = std::max(1, std::min(columns, n)), rows = (n + cols - 1) / cols;
  const int tile_w = view.width, tile_h = view.height + kLabelHeight;
  Image out;
  out.width = cols * tile_w + (cols + 1) * kGap;
  out.height = rows * tile_h + (rows + 1) * kGap;
  out.pixels.assign(static_cast<std::size_t>(out.width) * out.height * 3, 255);
  // The weights upsampled over the view, as the cells' centres interpolate (align_corners off).
  const torch::Tensor masks =
      torch::upsample_bilinear2d(normalised_grids(attention, s).unsqueeze(1),
                                 {view.height, view.width}, /*align_corners=*/false)
          .squeeze(1)
          .clamp(0, 1)
          .contiguous();
  const auto m = masks.accessor<float, 3>();
  for (int w = 0; w < n; ++w) {
    const int left = kGap + (w % cols) * (tile_w + kGap);
    const int top = kGap + (w / cols) * (tile_h + kGap);
    const int scale =
        stb_easy_font_width(const_cast<char*>(words[static_cast<std::size_t>(w)].c_str())) * 2 <=
                tile_w
            ? 2
            : 1;
    draw_text(out, words[static_cast<std::size_t>(w)], left + 2, top + 4, scale);
    for (int y = 0; y < view.height; ++y) {
      for (int x = 0; x < view.width; ++x) {
        const float keep = 0.25f + 0.75f * m[w][y][x];
        const std::uint8_t* src = view.at(x, y);
        std::uint8_t* dst =
            out.pixels.data() +
            (static_cast<std::size_t>(top + kLabelHeight + y) * out.width + left + x) * 3;
        for (int c = 0; c < 3; ++c)
          dst[c] = static_cast<std::uint8_t>(std::lround(static_cast<float>(src[c]) * keep));
      }
    }
  }
  return out;
}

std::string attention_figures_html(const Image& view, const torch::Tensor& attention,
                                   const std::vector<std::string>& words, const std::string& id) {
  const int s = grid_side(attention, "attention_figures_html");
  if (static_cast<std::size_t>(attention.size(0)) != words.size())
    throw InvalidArgument(
        fmt::format("attention_figures_html: expected one row of weights per "
                    "word ({} words), got {}",
                    words.size(), attention.size(0)));
  const torch::Tensor raw = attention.to(torch::kCPU, torch::kFloat).contiguous();
  const torch::Tensor scaled = normalised_grids(raw, s);
  const auto a = raw.accessor<float, 2>();
  const auto g = scaled.accessor<float, 3>();
  std::string html = fmt::format(
      "<style>.{0}{{width:{1}px;height:{2}px;background:url(data:image/png;base64,{3});"
      "background-size:100% 100%;position:relative}}.{0} svg{{position:absolute;left:0;top:0}}"
      "</style><div class='att'>",
      id, view.width, view.height, base64(encode_png(view)));
  for (std::size_t w = 0; w < words.size(); ++w) {
    html += fmt::format(
        "<figure><figcaption>{}</figcaption><div class='{}'><svg width='{}' height='{}' "
        "viewBox='0 0 {} {}' preserveAspectRatio='none' shape-rendering='crispEdges'>",
        html_escape(words[w]), id, view.width, view.height, s, s);
    for (int y = 0; y < s; ++y)
      for (int x = 0; x < s; ++x)
        html += fmt::format(
            "<rect x='{}' y='{}' width='1' height='1' fill='#000' "
            "fill-opacity='{:.3f}'><title>{:.3f}"
            "</title></rect>",
            x, y, 0.75 * (1.0 - g[static_cast<std::int64_t>(w)][y][x]),
            a[static_cast<std::int64_t>(w)][y * s + x]);
    html += "</svg></div></figure>";
  }
  return html + "</div>";
}

}  // namespace imcap::cli
