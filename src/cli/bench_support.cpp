#include "cli/bench_support.hpp"

#include <dirent.h>
#include <dlfcn.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb_image_write.h>

#include "detail/io.hpp"
#include "imcap/error.hpp"
#include "imcap/version.hpp"

namespace imcap::cli::bench {

std::vector<double> time_ms(const std::function<void()>& fn, Reps reps) {
  for (int i = 0; i < reps.warmup; ++i) fn();
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(std::max(0, reps.reps)));
  for (int i = 0; i < reps.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    out.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

namespace {

double round3(double x) { return std::round(x * 1000.0) / 1000.0; }

}  // namespace

Json summarize(const std::vector<double>& values, double scale) {
  std::vector<double> v;
  v.reserve(values.size());
  for (double x : values) v.push_back(x * scale);
  Json j;
  j["median"] = round3(median(v));
  j["min"] = v.empty() ? 0.0 : round3(*std::min_element(v.begin(), v.end()));
  j["max"] = v.empty() ? 0.0 : round3(*std::max_element(v.begin(), v.end()));
  j["reps"] = v.size();
  return j;
}

// ---- Generated inputs ----

namespace {

std::uint8_t clip8(double v) {
  return static_cast<std::uint8_t>(std::lround(std::clamp(v, 0.0, 255.0)));
}

// One photo-like RGB image (width x height x 3).
std::vector<std::uint8_t> photo(int index, int w, int h, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto below = [&](int n) { return static_cast<int>(unit(rng) * n); };
  // A low-frequency colour field: a small grid of random colours, smoothly interpolated.
  const int gh = 6 + index % 5, gw = 8 + index % 7;
  std::vector<double> grid(static_cast<std::size_t>(gh * gw * 3));
  for (auto& g : grid) g = 255.0 * unit(rng);
  std::vector<double> img(static_cast<std::size_t>(w) * h * 3);
  auto smooth = [](double t) { return t * t * (3 - 2 * t); };
  for (int y = 0; y < h; ++y) {
    const double fy = std::clamp((y + 0.5) * gh / h - 0.5, 0.0, gh - 1.0);
    const int y0 = std::min(static_cast<int>(fy), gh - 2 < 0 ? 0 : gh - 2);
    const double ty = smooth(fy - y0);
    for (int x = 0; x < w; ++x) {
      const double fx = std::clamp((x + 0.5) * gw / w - 0.5, 0.0, gw - 1.0);
      const int x0 = std::min(static_cast<int>(fx), gw - 2);
      const double tx = smooth(fx - x0);
      for (int c = 0; c < 3; ++c) {
        auto g = [&](int yy, int xx) {
          return grid[static_cast<std::size_t>((yy * gw + xx) * 3 + c)];
        };
        const double top = g(y0, x0) * (1 - tx) + g(y0, x0 + 1) * tx;
        const double bottom = g(y0 + 1, x0) * (1 - tx) + g(y0 + 1, x0 + 1) * tx;
        img[(static_cast<std::size_t>(y) * w + x) * 3 + c] = top * (1 - ty) + bottom * ty;
      }
    }
  }
  // Twelve shapes: filled ellipses, filled rectangles and thick lines.
  for (int s = 0; s < 12; ++s) {
    const int x0 = below(w), y0 = below(h);
    const int x1 = x0 + 20 + below(230), y1 = y0 + 20 + below(180);
    const double col[3] = {255.0 * unit(rng), 255.0 * unit(rng), 255.0 * unit(rng)};
    const int kind = below(3);
    const double half_width = (2 + below(10)) / 2.0;
    const double cx = (x0 + x1) / 2.0, cy = (y0 + y1) / 2.0, rx = (x1 - x0) / 2.0,
                 ry = (y1 - y0) / 2.0;
    const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    const int pad = kind == 2 ? static_cast<int>(half_width) + 1 : 0;
    for (int y = std::max(0, y0 - pad); y <= std::min(h - 1, y1 + pad); ++y) {
      for (int x = std::max(0, x0 - pad); x <= std::min(w - 1, x1 + pad); ++x) {
        bool inside = true;
        if (kind == 0) {
          const double u = (x - cx) / rx, v = (y - cy) / ry;
          inside = u * u + v * v <= 1.0;
        } else if (kind == 2) {
          const double t = std::clamp(((x - x0) * dx + (y - y0) * dy) / len2, 0.0, 1.0);
          const double ex = x0 + t * dx - x, ey = y0 + t * dy - y;
          inside = ex * ex + ey * ey <= half_width * half_width;
        }
        if (inside)
          for (int c = 0; c < 3; ++c) img[(static_cast<std::size_t>(y) * w + x) * 3 + c] = col[c];
      }
    }
  }
  // Gaussian blur (sigma 1.5), separable, edges clamped.
  constexpr int kRadius = 4;
  double kernel[2 * kRadius + 1];
  double sum = 0;
  for (int i = -kRadius; i <= kRadius; ++i) sum += kernel[i + kRadius] = std::exp(-i * i / 4.5);
  for (double& k : kernel) k /= sum;
  std::vector<double> tmp(img.size());
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (int i = -kRadius; i <= kRadius; ++i)
          acc += kernel[i + kRadius] *
                 img[(static_cast<std::size_t>(y) * w + std::clamp(x + i, 0, w - 1)) * 3 + c];
        tmp[(static_cast<std::size_t>(y) * w + x) * 3 + c] = acc;
      }
  // Vertical pass, then grain noise (sigma 6).
  std::normal_distribution<double> grain(0.0, 6.0);
  std::vector<std::uint8_t> out(img.size());
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (int i = -kRadius; i <= kRadius; ++i)
          acc += kernel[i + kRadius] *
                 tmp[(static_cast<std::size_t>(std::clamp(y + i, 0, h - 1)) * w + x) * 3 + c];
        out[(static_cast<std::size_t>(y) * w + x) * 3 + c] = clip8(std::round(acc) + grain(rng));
      }
  return out;
}

void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::string*>(context);
  out->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

}  // namespace

std::vector<std::string> write_photo_jpegs(const std::string& dir, int n, int width, int height,
                                           std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> paths;
  for (int i = 0; i < n; ++i) {
    const auto pixels = photo(i, width, height, rng);
    std::string bytes;
    if (stbi_write_jpg_to_func(append_bytes, &bytes, width, height, 3, pixels.data(), 90) == 0)
      throw IoError(fmt::format("bench: cannot encode JPEG {}", i));
    paths.push_back(detail::join_path(dir, fmt::format("img_{:03d}.jpg", i)));
    detail::write_file_atomic(paths.back(), bytes);
  }
  return paths;
}

std::uint64_t write_coco_annotations(const std::string& path, int images, int captions_per_image,
                                     int words, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  // Pronounceable words of 2 to 4 syllables, distinct by construction (the index is encoded).
  static const char* const kSyllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo",
                                           "be", "da", "fu", "go", "hi", "ju", "pe", "zo"};
  std::vector<std::string> vocab;
  vocab.reserve(static_cast<std::size_t>(words));
  for (int i = 0; i < words; ++i) {
    std::string w;
    int k = i;
    do {
      w += kSyllables[k % 16];
      k /= 16;
    } while (k > 0);
    if (w.size() < 4) w += "n";
    vocab.push_back(std::move(w));
  }
  std::vector<double> weights(static_cast<std::size_t>(words));
  for (int i = 0; i < words; ++i) weights[static_cast<std::size_t>(i)] = 1.0 / (i + 1.0);
  std::discrete_distribution<int> word(weights.begin(), weights.end());
  std::uniform_int_distribution<int> length(8, 15);
  std::string json = R"({"info": {"description": "imcap bench: synthetic COCO-sized captions"},)";
  json += "\n\"images\": [";
  for (int i = 0; i < images; ++i)
    json += fmt::format(
        R"({}{{"id": {}, "file_name": "COCO_val2014_{:012d}.jpg", "width": 640, "height": 480}})",
        i ? ", " : "", 100000 + i, 100000 + i);
  json += "],\n\"annotations\": [";
  std::int64_t id = 1;
  for (int i = 0; i < images; ++i) {
    for (int c = 0; c < captions_per_image; ++c, ++id) {
      std::string caption = "A";
      for (int t = length(rng); t > 0; --t)
        caption += " " + vocab[static_cast<std::size_t>(word(rng))];
      caption += ".";
      json += fmt::format(R"({}{{"image_id": {}, "id": {}, "caption": "{}"}})", id > 1 ? ",\n" : "",
                          100000 + i, id, caption);
    }
  }
  json += "]}\n";
  detail::write_file_atomic(path, json);
  return json.size();
}

std::string make_temp_dir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = detail::join_path(tmp && *tmp ? tmp : "/tmp", prefix + "XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr)
    throw IoError(fmt::format("{}: cannot create a temporary folder: {}", pattern,
                              detail::errno_message(errno)));
  return pattern;
}

void remove_flat_dir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") ::unlink(detail::join_path(dir, name).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

std::vector<std::string> list_jpegs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr)
    throw IoError(fmt::format("{}: cannot open the folder: {}", dir, detail::errno_message(errno)));
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".jpg") == 0)
      out.push_back(detail::join_path(dir, name));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// ---- Environment ----

namespace {

std::string cpuinfo(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      const auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      const auto begin = line.find_first_not_of(" \t", colon + 1);
      return begin == std::string::npos ? "" : line.substr(begin);
    }
  }
  return "";
}

}  // namespace

Json environment() {
  Json env;
  env["imcap"] = kVersion;
  env["torch"] = TORCH_VERSION;
  utsname u{};
  if (::uname(&u) == 0) env["platform"] = fmt::format("{}-{}-{}", u.sysname, u.release, u.machine);
  env["cpu_count"] = std::thread::hardware_concurrency();
  env["torch_num_threads"] = torch::get_num_threads();
  env["torch_num_interop_threads"] = torch::get_num_interop_threads();
  env["mkldnn_enabled"] = at::hasMKLDNN();
  env["cpu_model"] = cpuinfo("model name");
  env["cpu_avx512"] = (" " + cpuinfo("flags") + " ").find(" avx512f ") != std::string::npos;
  env["openblas"] = nullptr;
  using GetString = char* (*)();
  using GetInt = int (*)();
  auto* config = reinterpret_cast<GetString>(::dlsym(RTLD_DEFAULT, "openblas_get_config"));
  auto* corename = reinterpret_cast<GetString>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  auto* threads = reinterpret_cast<GetInt>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (config != nullptr && corename != nullptr && threads != nullptr) {
    Dl_info info{};
    std::string path;
    if (::dladdr(reinterpret_cast<void*>(config), &info) != 0 && info.dli_fname != nullptr)
      path = info.dli_fname;
    // Set by the user or by the CLI's restart (cli/blas_core.hpp).
    const char* core_type = std::getenv("OPENBLAS_CORETYPE");
    env["openblas"] = {{"path", path},
                       {"config", config()},
                       {"corename", corename()},
                       {"num_threads", threads()},
                       {"OPENBLAS_CORETYPE", core_type != nullptr ? Json(core_type) : Json()}};
  }
  return env;
}

}  // namespace imcap::cli::bench
