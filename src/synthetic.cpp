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

#include "detail/enum_names.hpp"
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

using Rng = std::mt19937_64;

std::size_t pick(Rng& rng, std::size_t n) {
  return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
}
double uniform(Rng& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

// A muted, slightly noisy background, far from every shape colour's saturation.
std::vector<std::uint8_t> background(Rng& rng, int size) {
  const int base = 100 + static_cast<int>(pick(rng, 60));
  const std::array<int, 3> bg{base + static_cast<int>(pick(rng, 20)),
                              base + static_cast<int>(pick(rng, 20)),
                              base + static_cast<int>(pick(rng, 20))};
  std::vector<std::uint8_t> px(static_cast<std::size_t>(size) * size * 3);
  for (std::size_t i = 0; i < px.size(); ++i)
    px[i] = static_cast<std::uint8_t>(
        std::clamp(bg[i % 3] + static_cast<int>(pick(rng, 9)) - 4, 0, 255));
  return px;
}

// Paints, with 2x2 supersampling, the pixels around (cx, cy) where `in(u, v)` holds for
// coordinates in units of r; `color(u, v)` gives their colour.
template <typename Inside, typename Paint>
void paint(std::vector<std::uint8_t>& px, int size, double cx, double cy, double r, Inside in,
           Paint color) {
  for (int y = std::max(0, static_cast<int>(cy - r - 1));
       y < std::min(size, static_cast<int>(cy + r + 2)); ++y)
    for (int x = std::max(0, static_cast<int>(cx - r - 1));
         x < std::min(size, static_cast<int>(cx + r + 2)); ++x) {
      int hits = 0;
      std::array<int, 3> sum{0, 0, 0};
      for (int sy = 0; sy < 2; ++sy)
        for (int sx = 0; sx < 2; ++sx) {
          const double u = (x + 0.25 + 0.5 * sx - cx) / r, v = (y + 0.25 + 0.5 * sy - cy) / r;
          if (!in(u, v)) continue;
          ++hits;
          const std::array<int, 3> c = color(u, v);
          for (int k = 0; k < 3; ++k) sum[k] += c[k];
        }
      if (hits == 0) continue;
      auto* p = &px[(static_cast<std::size_t>(y) * size + x) * 3];
      for (int k = 0; k < 3; ++k)
        p[k] = static_cast<std::uint8_t>((p[k] * (4 - hits) + sum[k]) / 4);
    }
}

std::string plural(const std::string& kind) { return kind == "cross" ? "crosses" : kind + "s"; }

constexpr std::array<const char*, 5> kNumbers{"zero", "one", "two", "three", "four"};

// The five phrasings of a description `d` (a noun phrase naming everything in the scene).
std::vector<std::string> five(const std::string& d, const std::string& fourth) {
  return {d, fmt::format("there is {} in the picture", d), fmt::format("an image showing {}", d),
          fourth, fmt::format("a picture with {}", d)};
}

// Cells of a 3 x 3 grid, shuffled: places for up to nine things that never overlap.
std::vector<std::pair<double, double>> grid_places(Rng& rng, int size, double r) {
  std::vector<std::pair<double, double>> cells;
  const double cell = size / 3.0;
  for (int gy = 0; gy < 3; ++gy)
    for (int gx = 0; gx < 3; ++gx)
      cells.emplace_back(cell * (gx + 0.5) + uniform(rng, -1, 1) * (cell * 0.5 - r) * 0.7,
                         cell * (gy + 0.5) + uniform(rng, -1, 1) * (cell * 0.5 - r) * 0.7);
  std::shuffle(cells.begin(), cells.end(), rng);
  return cells;
}

// counts: one or two groups of identical shapes, each of one kind and colour.
void render_counts(Rng& rng, int size, std::vector<std::uint8_t>& px, SyntheticScene& scene) {
  const std::size_t groups = 1 + pick(rng, 2);
  std::vector<std::pair<std::size_t, std::size_t>> kinds;  // (kind, colour) per group
  std::vector<int> counts;
  while (kinds.size() < groups) {
    const auto k = std::make_pair(pick(rng, kKinds.size()), pick(rng, kColors.size()));
    if (!kinds.empty() && kinds[0].first == k.first) continue;
    kinds.push_back(k);
    counts.push_back(1 + static_cast<int>(pick(rng, groups == 1 ? 4 : 3)));
  }
  const double r = size / 3.0 * 0.34;
  const auto places = grid_places(rng, size, r);
  std::size_t next = 0;
  std::vector<std::string> parts, parts_in;
  for (std::size_t g = 0; g < groups; ++g) {
    const auto& kind = kKinds[kinds[g].first];
    const Color& color = kColors[kinds[g].second];
    for (int i = 0; i < counts[g]; ++i, ++next) {
      const auto [cx, cy] = places[next];
      paint(
          px, size, cx, cy, r * uniform(rng, 0.85, 1.0),
          [&](double u, double v) { return inside(kind, u, v); },
          [&](double, double) { return color.rgb; });
      scene.shapes.push_back({kind, color.name, ""});
    }
    const std::string noun = counts[g] == 1 ? kind : plural(kind);
    parts.push_back(fmt::format("{} {} {}", kNumbers[counts[g]], color.name, noun));
    parts_in.push_back(fmt::format("{} {} in {}", kNumbers[counts[g]], noun, color.name));
  }
  const auto join = [](const std::vector<std::string>& p) {
    return p.size() == 1 ? p[0] : p[0] + " and " + p[1];
  };
  const std::string d = join(parts);
  scene.captions = {d, fmt::format("there are {} in the picture", d),
                    fmt::format("an image showing {}", d), join(parts_in),
                    fmt::format("a picture with {}", d)};
  if (counts[0] == 1) scene.captions[1] = fmt::format("there is {} in the picture", d);
}

// relations: two different shapes, one above, below, left or right of the other.
void render_relations(Rng& rng, int size, std::vector<std::uint8_t>& px, SyntheticScene& scene) {
  std::array<std::size_t, 2> kind{pick(rng, kKinds.size()), 0}, color{pick(rng, kColors.size()), 0};
  do {
    kind[1] = pick(rng, kKinds.size());
    color[1] = pick(rng, kColors.size());
  } while (kind[1] == kind[0] && color[1] == color[0]);
  const std::size_t relation = pick(rng, 4);  // 0 above, 1 below, 2 left of, 3 right of
  const double r = size * 0.17;
  // The first shape's offset from the second along the relation's axis, with some slack across.
  const double along = size * uniform(rng, 0.22, 0.3), across = size * uniform(rng, -0.12, 0.12);
  const double mx = size * 0.5 + uniform(rng, -0.06, 0.06) * size,
               my = size * 0.5 + uniform(rng, -0.06, 0.06) * size;
  const double sign = relation == 0 || relation == 2 ? -1.0 : 1.0;
  const bool vertical = relation < 2;
  const std::array<double, 2> cx{vertical ? mx + across : mx + sign * along,
                                 vertical ? mx - across : mx - sign * along};
  const std::array<double, 2> cy{vertical ? my + sign * along : my + across,
                                 vertical ? my - sign * along : my - across};
  std::array<std::string, 2> d;
  for (int i = 0; i < 2; ++i) {
    const auto& k = kKinds[kind[i]];
    const Color& c = kColors[color[i]];
    paint(
        px, size, cx[i], cy[i], r * uniform(rng, 0.85, 1.0),
        [&](double u, double v) { return inside(k, u, v); }, [&](double, double) { return c.rgb; });
    scene.shapes.push_back({k, c.name, ""});
    d[i] = fmt::format("{} {} {}", article(c.name), c.name, k);
  }
  constexpr std::array<const char*, 4> kRelation{"above", "below", "to the left of",
                                                 "to the right of"};
  constexpr std::array<const char*, 4> kConverse{"below", "above", "to the right of",
                                                 "to the left of"};
  const std::string it = vertical ? (relation == 0 ? "above it" : "below it")
                                  : (relation == 2 ? "on its left" : "on its right");
  scene.captions = {fmt::format("{} {} {}", d[0], kRelation[relation], d[1]),
                    fmt::format("{} {} {}", d[1], kConverse[relation], d[0]),
                    fmt::format("there is {} {} {}", d[0], kRelation[relation], d[1]),
                    fmt::format("{} is {} {}", d[0], kRelation[relation], d[1]),
                    fmt::format("{} with {} {}", d[1], d[0], it)};
}

// glyphs: 1-3 characters of a 5 x 7 bitmap font, left to right, each in its own colour.
struct Glyph {
  const char* name;
  const char* noun;  // letter or digit
  std::array<const char*, 7> rows;
};
constexpr std::array<Glyph, 12> kGlyphs{{
    {"b", "letter", {"x....", "x....", "xxxx.", "x...x", "x...x", "x...x", "xxxx."}},
    {"d", "letter", {"....x", "....x", ".xxxx", "x...x", "x...x", "x...x", ".xxxx"}},
    {"e", "letter", {".....", ".....", ".xxx.", "x...x", "xxxxx", "x....", ".xxxx"}},
    {"f", "letter", {"..xx.", ".x...", "xxxx.", ".x...", ".x...", ".x...", ".x..."}},
    {"k", "letter", {"x....", "x....", "x..x.", "x.x..", "xx...", "x.x..", "x..x."}},
    {"p", "letter", {".....", "xxxx.", "x...x", "x...x", "xxxx.", "x....", "x...."}},
    {"r", "letter", {".....", ".....", "x.xx.", "xx..x", "x....", "x....", "x...."}},
    {"2", "digit", {".xxx.", "x...x", "....x", "...x.", "..x..", ".x...", "xxxxx"}},
    {"3", "digit", {"xxxx.", "....x", "....x", ".xxx.", "....x", "....x", "xxxx."}},
    {"4", "digit", {"...x.", "..xx.", ".x.x.", "x..x.", "xxxxx", "...x.", "...x."}},
    {"5", "digit", {"xxxxx", "x....", "xxxx.", "....x", "....x", "x...x", ".xxx."}},
    {"7", "digit", {"xxxxx", "....x", "...x.", "..x..", ".x...", ".x...", ".x..."}},
}};

void render_glyphs(Rng& rng, int size, std::vector<std::uint8_t>& px, SyntheticScene& scene) {
  const int n = 1 + static_cast<int>(pick(rng, 3));
  const double slot = static_cast<double>(size) / 3.0;
  const double r = slot * 0.42;  // half the glyph's height
  const double start = (size - slot * n) / 2.0;
  std::vector<std::string> parts;
  for (int i = 0; i < n; ++i) {
    const Glyph& g = kGlyphs[pick(rng, kGlyphs.size())];
    const Color& c = kColors[pick(rng, kColors.size())];
    const double cx = start + slot * (i + 0.5) + uniform(rng, -0.08, 0.08) * slot;
    const double cy = size * 0.5 + uniform(rng, -0.15, 0.15) * size;
    paint(
        px, size, cx, cy, r,
        [&](double u, double v) {
          const int col = static_cast<int>(std::floor((u / (5.0 / 7.0) + 1.0) * 2.5));
          const int row = static_cast<int>(std::floor((v + 1.0) * 3.5));
          return col >= 0 && col < 5 && row >= 0 && row < 7 && g.rows[row][col] == 'x';
        },
        [&](double, double) { return c.rgb; });
    scene.shapes.push_back({g.name, c.name, ""});
    parts.push_back(fmt::format("{} {} {} {}", article(c.name), c.name, g.noun, g.name));
  }
  std::string d = parts[0];
  for (int i = 1; i < n; ++i) d += (i + 1 == n ? " and " : " , ") + parts[i];
  scene.captions = five(d, fmt::format("{} written on a plain background", d));
  scene.captions[1] = fmt::format("a sign that shows {}", d);
}

// textures: 1-2 large shapes, each filled with a pattern of its colour and white or black.
void render_textures(Rng& rng, int size, std::vector<std::uint8_t>& px, SyntheticScene& scene) {
  constexpr std::array<const char*, 4> kPatterns{"striped", "checkered", "dotted", "plain"};
  const int n = 1 + static_cast<int>(pick(rng, 2));
  const double slot = static_cast<double>(size) / n;
  const double r = std::min(slot * 0.42, size * 0.4);
  std::vector<std::string> parts;
  for (int i = 0; i < n; ++i) {
    const auto& kind = kKinds[pick(rng, 3)];  // circle, square, triangle: room for the pattern
    std::size_t ci = pick(rng, kColors.size() - 2);  // neither white nor black
    const Color& c = kColors[ci];
    const std::size_t pattern = pick(rng, kPatterns.size());
    const std::array<int, 3> other = c.rgb[0] + c.rgb[1] + c.rgb[2] > 400
                                         ? std::array<int, 3>{15, 15, 15}
                                         : std::array<int, 3>{250, 250, 250};
    const double cx = slot * (i + 0.5), cy = size * 0.5 + uniform(rng, -0.08, 0.08) * size;
    paint(
        px, size, cx, cy, r, [&](double u, double v) { return inside(kind, u, v); },
        [&](double u, double v) {
          const double k = 3.0;  // pattern periods per radius
          const int a = static_cast<int>(std::floor((u + 2.0) * k)),
                    b = static_cast<int>(std::floor((v + 2.0) * k));
          bool first = true;
          if (pattern == 0) first = a % 2 == 0;
          if (pattern == 1) first = (a + b) % 2 == 0;
          if (pattern == 2) {
            const double fu = (u + 2.0) * k - a - 0.5, fv = (v + 2.0) * k - b - 0.5;
            first = fu * fu + fv * fv > 0.09;
          }
          return first ? c.rgb : other;
        });
    scene.shapes.push_back({kind, c.name, kPatterns[pattern]});
    parts.push_back(
        fmt::format("{} {} {} {}", article(kPatterns[pattern]), kPatterns[pattern], c.name, kind));
  }
  const std::string d = n == 1 ? parts[0] : parts[0] + " and " + parts[1];
  scene.captions =
      five(d, n == 1 ? fmt::format("{} on a plain background", d)
                     : fmt::format("{} on the left and {} on the right", parts[0], parts[1]));
}

}  // namespace

SyntheticKind parse_synthetic_kind(const std::string& name) {
  return detail::parse_enum<SyntheticKind>(name);
}

std::string to_string(SyntheticKind kind) { return detail::enum_name(kind); }

std::vector<std::uint8_t> render_synthetic_scene(std::uint64_t seed, const SyntheticOptions& o,
                                                 SyntheticScene& scene) {
  if (o.kind == SyntheticKind::kShapes)
    return render_synthetic_scene(seed, o.image_size, o.max_shapes, scene);
  Rng rng(seed);
  scene.shapes.clear();
  auto px = background(rng, o.image_size);
  switch (o.kind) {
    case SyntheticKind::kCounts:
      render_counts(rng, o.image_size, px, scene);
      break;
    case SyntheticKind::kRelations:
      render_relations(rng, o.image_size, px, scene);
      break;
    case SyntheticKind::kGlyphs:
      render_glyphs(rng, o.image_size, px, scene);
      break;
    case SyntheticKind::kTextures:
      render_textures(rng, o.image_size, px, scene);
      break;
    case SyntheticKind::kShapes:
      break;
  }
  return px;
}

namespace {

void write_split(const std::string& dir, const std::string& split, std::size_t count,
                 std::int64_t first_id, const SyntheticOptions& o, std::uint64_t split_seed,
                 const std::string& annotations_path) {
  const std::string images = detail::join_path(dir, split);
  detail::create_directories(images);
  nlohmann::json root;
  root["info"] = {{"description", fmt::format("imcap synthetic {} dataset", to_string(o.kind))},
                  {"seed", o.seed},
                  {"split", split}};
  root["licenses"] = nlohmann::json::array();
  root["images"] = nlohmann::json::array();
  root["annotations"] = nlohmann::json::array();
  std::int64_t ann_id = first_id * 10;
  for (std::size_t i = 0; i < count; ++i) {
    const std::int64_t id = first_id + static_cast<std::int64_t>(i);
    SyntheticScene scene;
    const auto px = render_synthetic_scene(split_seed + i * 0x9e3779b97f4a7c15ull, o, scene);
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
