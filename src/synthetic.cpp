#include "imcap/synthetic.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>

#include "detail/io.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

struct Color {
  const char* name;
  std::array<int, 3> rgb;
};
constexpr std::array<Color, 8> kColors{{{"red", {220, 30, 30}},
                                        {"green", {30, 170, 40}},
                                        {"blue", {30, 60, 220}},
                                        {"yellow", {240, 220, 30}},
                                        {"purple", {140, 40, 170}},
                                        {"orange", {250, 140, 20}},
                                        {"white", {250, 250, 250}},
                                        {"black", {15, 15, 15}}}};
constexpr std::array<const char*, 5> kKinds{"circle", "square", "triangle", "diamond", "cross"};

// Whether (x, y), relative to the shape centre and in units of its radius, lies inside.
bool inside(const std::string& kind, double x, double y) {
  if (kind == "circle") return x * x + y * y <= 1.0;
  if (kind == "square") return std::abs(x) <= 0.85 && std::abs(y) <= 0.85;
  if (kind == "diamond") return std::abs(x) + std::abs(y) <= 1.0;
  if (kind == "cross")
    return (std::abs(x) <= 0.3 && std::abs(y) <= 1.0) || (std::abs(y) <= 0.3 && std::abs(x) <= 1.0);
  // triangle pointing up: apex (0,-1), base from (-1,0.8) to (1,0.8)
  if (y > 0.8 || y < -1.0) return false;
  const double half_width = (y + 1.0) / 1.8;
  return std::abs(x) <= half_width;
}

std::string article(const std::string& next_word) {
  return std::string("aeiou").find(next_word.front()) != std::string::npos ? "an" : "a";
}

std::string describe(const SyntheticScene::Shape& s) {
  return fmt::format("{} {} {} {}", article(s.size), s.size, s.color, s.kind);
}

std::vector<std::string> phrase(const std::vector<SyntheticScene::Shape>& shapes) {
  std::vector<std::string> d;
  for (const auto& s : shapes) d.push_back(describe(s));
  if (d.size() == 1)
    return {d[0], fmt::format("there is {} in the picture", d[0]),
            fmt::format("an image showing {}", d[0]), fmt::format("a picture with {}", d[0]),
            fmt::format("{} on a plain background", d[0])};
  if (d.size() == 2)
    return {fmt::format("{} and {}", d[0], d[1]),
            fmt::format("there is {} and {} in the picture", d[0], d[1]),
            fmt::format("an image showing {} next to {}", d[0], d[1]),
            fmt::format("{} on the left and {} on the right", d[0], d[1]),
            fmt::format("a picture with {} and {}", d[0], d[1])};
  return {fmt::format("{} , {} and {}", d[0], d[1], d[2]),
          fmt::format("there is {} , {} and {} in the picture", d[0], d[1], d[2]),
          fmt::format("an image showing {} , {} and {}", d[0], d[1], d[2]),
          fmt::format("{} on the left , {} in the middle and {} on the right", d[0], d[1], d[2]),
          fmt::format("a picture with {} , {} and {}", d[0], d[1], d[2])};
}

}  // namespace

std::vector<std::uint8_t> render_synthetic_scene(std::uint64_t seed, int size, int max_shapes,
                                                 SyntheticScene& scene) {
  std::mt19937_64 rng(seed);
  auto uniform = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  auto pick = [&](std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
  };
  const int n = 1 + static_cast<int>(pick(static_cast<std::size_t>(std::clamp(max_shapes, 1, 3))));
  scene.shapes.clear();
  // A muted background, far from every shape colour's saturation.
  const int base = 100 + static_cast<int>(pick(60));
  std::array<int, 3> bg{base + static_cast<int>(pick(20)), base + static_cast<int>(pick(20)),
                        base + static_cast<int>(pick(20))};
  std::vector<std::uint8_t> px(static_cast<std::size_t>(size) * size * 3);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c)
        px[(static_cast<std::size_t>(y) * size + x) * 3 + c] =
            static_cast<std::uint8_t>(std::clamp(bg[c] + static_cast<int>(pick(9)) - 4, 0, 255));
  const double slot = static_cast<double>(size) / n;
  for (int i = 0; i < n; ++i) {
    SyntheticScene::Shape shape;
    shape.kind = kKinds[pick(kKinds.size())];
    const Color& color = kColors[pick(kColors.size())];
    shape.color = color.name;
    const bool large = pick(2) == 1;
    shape.size = large ? "large" : "small";
    const double max_r = std::min(slot * 0.45, size * 0.3);
    const double r = max_r * (large ? uniform(0.85, 1.0) : uniform(0.45, 0.55));
    const double cx = slot * (i + 0.5) + uniform(-1.0, 1.0) * (slot * 0.5 - r) * 0.8;
    const double cy = size * 0.5 + uniform(-1.0, 1.0) * (size * 0.5 - r) * 0.8;
    for (int y = std::max(0, static_cast<int>(cy - r - 1));
         y < std::min(size, static_cast<int>(cy + r + 2)); ++y)
      for (int x = std::max(0, static_cast<int>(cx - r - 1));
           x < std::min(size, static_cast<int>(cx + r + 2)); ++x) {
        int hits = 0;  // 2x2 supersampling for smooth edges
        for (int sy = 0; sy < 2; ++sy)
          for (int sx = 0; sx < 2; ++sx)
            hits +=
                inside(shape.kind, (x + 0.25 + 0.5 * sx - cx) / r, (y + 0.25 + 0.5 * sy - cy) / r);
        if (hits == 0) continue;
        auto* p = &px[(static_cast<std::size_t>(y) * size + x) * 3];
        for (int c = 0; c < 3; ++c)
          p[c] = static_cast<std::uint8_t>((p[c] * (4 - hits) + color.rgb[c] * hits) / 4);
      }
    scene.shapes.push_back(std::move(shape));
  }
  scene.captions = phrase(scene.shapes);
  return px;
}

namespace {

void write_split(const std::string& dir, const std::string& split, std::size_t count,
                 std::int64_t first_id, const SyntheticOptions& o, std::uint64_t split_seed,
                 const std::string& annotations_path) {
  const std::string images = detail::join_path(dir, split);
  detail::create_directories(images);
  nlohmann::json root;
  root["info"] = {
      {"description", "imcap synthetic shapes dataset"}, {"seed", o.seed}, {"split", split}};
  root["licenses"] = nlohmann::json::array();
  root["images"] = nlohmann::json::array();
  root["annotations"] = nlohmann::json::array();
  std::int64_t ann_id = first_id * 10;
  for (std::size_t i = 0; i < count; ++i) {
    const std::int64_t id = first_id + static_cast<std::int64_t>(i);
    SyntheticScene scene;
    const auto px = render_synthetic_scene(split_seed + i * 0x9e3779b97f4a7c15ull, o.image_size,
                                           o.max_shapes, scene);
    const std::string name = fmt::format("{:06d}.jpg", id);
    const std::string path = detail::join_path(images, name);
    if (stbi_write_jpg(path.c_str(), o.image_size, o.image_size, 3, px.data(), o.jpeg_quality) == 0)
      throw IoError(fmt::format("{}: cannot write the image", path));
    root["images"].push_back(
        {{"id", id}, {"file_name", name}, {"width", o.image_size}, {"height", o.image_size}});
    for (const auto& caption : scene.captions)
      root["annotations"].push_back({{"id", ann_id++}, {"image_id", id}, {"caption", caption}});
  }
  detail::write_file_atomic(annotations_path, root.dump());
}

}  // namespace

SyntheticDataset generate_synthetic_dataset(const std::string& dir, const SyntheticOptions& o) {
  if (o.image_size < 16 || o.image_size > 1024)
    throw InvalidArgument(
        fmt::format("synthetic dataset: image_size {} is outside [16, 1024]", o.image_size));
  if (o.max_shapes < 1 || o.max_shapes > 3)
    throw InvalidArgument(
        fmt::format("synthetic dataset: max_shapes {} is outside [1, 3]", o.max_shapes));
  if (o.jpeg_quality < 1 || o.jpeg_quality > 100)
    throw InvalidArgument(
        fmt::format("synthetic dataset: jpeg_quality {} is outside [1, 100]", o.jpeg_quality));
  if (o.train_images == 0)
    throw InvalidArgument("synthetic dataset: train_images must be at least 1");
  SyntheticDataset out;
  out.train_annotations = detail::join_path(dir, "captions_train.json");
  out.train_images = detail::join_path(dir, "train");
  out.val_annotations = detail::join_path(dir, "captions_val.json");
  out.val_images = detail::join_path(dir, "val");
  write_split(dir, "train", o.train_images, 1, o, o.seed * 1000003ull + 1, out.train_annotations);
  write_split(dir, "val", o.val_images, 1000000, o, o.seed * 1000003ull + 2, out.val_annotations);
  return out;
}

}  // namespace imcap
