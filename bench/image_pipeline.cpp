// Data-pipeline benchmark: JPEG file -> decode -> train transform (Resize 256, RandomCrop 224,
// RandomHorizontalFlip, ToTensor, Normalize), as ../shared/bench/python_baseline.py measures
// data_pipeline_images_per_s. Make the JPEGs with bench/make_jpegs.py.
//
//   imcap_bench_images DIR [PASSES] [THREADS]
#include <fmt/format.h>

#include <dirent.h>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "imcap/error.hpp"
#include "imcap/image.hpp"

namespace {

std::vector<std::string> list_jpegs(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".jpg") == 0)
        out.push_back(dir + "/" + name);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct Stats {
  double median, min, max;
};

// CPU seconds used by the whole process: on a busy machine, images per CPU-second is the fairer
// per-thread figure (wall-clock rates depend on what else runs).
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

Stats summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return {median, v.front(), v.back()};
}

// Images per second of `passes` timed passes over all files (after one warm-up pass), with the
// files split between `threads` threads.
std::pair<Stats, Stats> run(const std::vector<std::string>& files,
                            const imcap::DecodeOptions& decode, int passes, int threads) {
  const imcap::ImageTransform train = imcap::ImageTransform::train();
  std::vector<double> rates, cpu_rates;
  for (int pass = 0; pass <= passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        std::mt19937_64 rng(static_cast<std::uint64_t>(pass * 1000 + t));
        for (std::size_t i = t; i < files.size(); i += threads) {
          const at::Tensor x = train(imcap::decode_image(files[i], decode), rng);
          if (x.numel() != 3 * 224 * 224) throw imcap::Error("unexpected tensor size");
        }
      });
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double c = cpu_seconds() - c0;
    if (pass > 0) {
      rates.push_back(files.size() / s);
      cpu_rates.push_back(files.size() / c);
    }
  }
  return {summarize(rates), summarize(cpu_rates)};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: {} JPEG_DIR [PASSES=10] [THREADS=hardware]\n", argv[0]);
    return 2;
  }
  const std::vector<std::string> files = list_jpegs(argv[1]);
  if (files.empty()) {
    fmt::print(stderr, "no .jpg files in {} (make them with bench/make_jpegs.py)\n", argv[1]);
    return 1;
  }
  const int passes = argc > 2 ? std::max(1, std::atoi(argv[2])) : 10;
  const int all = argc > 3 ? std::max(1, std::atoi(argv[3]))
                           : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  imcap::DecodeOptions full;
  const imcap::DecodeOptions fast = imcap::ImageTransform::train().fast_decode_options();
  fmt::print(
      "{} JPEGs, {} passes; images per wall-clock second and per CPU second "
      "(median, min, max):\n",
      files.size(), passes);
  for (const auto& [label, options, threads] :
       {std::tuple{"decode full size, 1 thread", full, 1},
        std::tuple{"DCT-domain downscaling, 1 thread", fast, 1},
        std::tuple{"DCT-domain downscaling, all threads", fast, all}}) {
    const auto [wall, cpu] = run(files, options, passes, threads);
    fmt::print("  {:<36} wall {:7.1f} {:7.1f} {:7.1f}   cpu {:7.1f} {:7.1f} {:7.1f}{}\n", label,
               wall.median, wall.min, wall.max, cpu.median, cpu.min, cpu.max,
               threads > 1 ? fmt::format("  ({} threads)", threads) : "");
  }
  return 0;
}
