// Pieces of `imcap bench` (private to the CLI): timing statistics, the generated inputs
// (photo-like JPEGs, a COCO-sized annotation file) and a description of the machine.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace imcap::cli::bench {

using Json = nlohmann::ordered_json;

/// Warm-up runs and timed repetitions of one measurement.
struct Reps {
  int warmup = 1;
  int reps = 3;
};

/// Milliseconds of each timed call of fn, after the warm-up calls.
std::vector<double> time_ms(const std::function<void()>& fn, Reps reps);

/// {"median", "min", "max", "reps"} of values times scale, rounded to 3 decimals as the
/// PyTorch baseline (../shared/bench/python_baseline.py) does.
Json summarize(const std::vector<double>& values, double scale = 1.0);
/// The median of values (0 for none).
double median(std::vector<double> values);

/// Writes n photo-like JPEGs of width x height at quality 90 into dir (img_000.jpg ...): a smooth
/// colour field, twelve filled ellipses, rectangles and thick lines, a slight blur and grain
/// noise, as the baseline's make_jpegs() draws them (not the same pixels: a deterministic
/// pattern from seed). Returns their paths. Throws IoError when a file cannot be written.
std::vector<std::string> write_photo_jpegs(const std::string& dir, int n, int width, int height,
                                           std::uint64_t seed);

/// Writes a COCO captions file with `images` images of `captions_per_image` captions each,
/// 8 to 15 words drawn from a Zipf-distributed vocabulary of `words` words (COCO 2014 val:
/// 40,504 images, about 5 captions each, 23 MB). Returns the file's size in bytes.
std::uint64_t write_coco_annotations(const std::string& path, int images, int captions_per_image,
                                     int words, std::uint64_t seed);

/// A fresh temporary folder under $TMPDIR (or /tmp); throws IoError.
std::string make_temp_dir(const std::string& prefix);
/// Removes the files directly inside dir, then dir itself (best effort).
void remove_flat_dir(const std::string& dir);
/// The .jpg files of a folder, sorted by name.
std::vector<std::string> list_jpegs(const std::string& dir);

/// The machine and the libraries: CPU, cores, LibTorch version and threads, OpenBLAS's
/// configuration (when loaded), with the baseline's key names where they mean the same.
Json environment();

}  // namespace imcap::cli::bench
