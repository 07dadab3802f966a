// The fuzz targets: one function per file format imcap reads. Each takes arbitrary bytes and
// may only return or throw an imcap::Error; any other exception, a crash, a sanitizer report
// or a broken invariant (checked with require()) is a bug. The libFuzzer drivers in fuzz/
// call them, and tests/test_robustness.cpp replays every file of fuzz/corpus/ through them.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "detail/pickle.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"
#include "imcap/import.hpp"
#include "imcap/model.hpp"
#include "imcap/vocabulary.hpp"
#include "imcap/weights.hpp"

namespace imcap::fuzz {

/// A broken invariant: not an imcap::Error, so it fails the fuzzer and the replay test.
struct InvariantViolated : std::logic_error {
  using std::logic_error::logic_error;
};

inline void require(bool ok, const char* what) {
  if (!ok) throw InvariantViolated(what);
}

/// A scratch file for the loaders that take a path, one per process, removed at exit.
class ScratchFile {
 public:
  explicit ScratchFile(const char* tag) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/imcap-fuzz-" +
            std::to_string(::getpid()) + "-" + tag;
  }
  ~ScratchFile() { ::unlink(path_.c_str()); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  /// Replaces the file's content with data; returns its path.
  const std::string& write(std::string_view data) const {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) std::abort();  // the harness itself is broken, not the input
    std::size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
      if (n <= 0) std::abort();
      done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return path_;
  }

 private:
  std::string path_;
};

/// JPEG, PNG, BMP and GIF decoding (stb_image and libjpeg-turbo behind imcap's checks).
inline void image(std::string_view data) {
  DecodeOptions options;
  options.max_pixels = std::uint64_t{1} << 22;  // keeps each run's memory small
  try {
    const Image img = decode_image_memory(data.data(), data.size(), "fuzz.img", options);
    require(img.width > 0 && img.height > 0, "decoded image is empty");
    require(img.pixels.size() == std::size_t(img.width) * std::size_t(img.height) * 3,
            "pixel buffer does not match width x height x 3");
    require(std::uint64_t(img.width) * std::uint64_t(img.height) <= options.max_pixels,
            "image above max_pixels was decoded");
  } catch (const Error&) {
  }
}

/// COCO captions JSON (or Karpathy's split file), then the statistics and the tokenizer on
/// what it holds, and a Karpathy file's splits.
inline void coco(std::string_view data) {
  try {
    const auto a = CocoAnnotations::parse(data, "fuzz.json");
    if (a.karpathy()) {
      const auto part =
          CocoAnnotations::parse(data, "fuzz.json", AnnotationOptions{"train+restval"});
      require(part.images().size() <= a.images().size(), "a split holds more images than the file");
    }
    const auto stats = caption_statistics(a);
    require(stats.captions == a.captions().size(), "statistics miscount the captions");
    for (const auto& image : a.images())
      require(!image.file_name.empty() && image.file_name[0] != '/', "unsafe file_name accepted");
    for (const auto& c : a.captions()) tokenize(c.caption);
  } catch (const Error&) {
  }
}

/// imcap's vocabulary files: whatever loads must survive a save/load round trip.
inline void vocabulary(std::string_view data) {
  try {
    std::istringstream in{std::string(data)};
    const Vocabulary v = Vocabulary::read(in, "fuzz.vocab");
    std::istringstream again(v.to_string());
    require(Vocabulary::read(again, "fuzz.vocab (saved)") == v, "vocabulary round trip differs");
    for (std::int64_t id = 0; id < static_cast<std::int64_t>(v.size()); ++id)
      require(v.id(v.token(id)) == id, "token and id lookups disagree");
  } catch (const Error&) {
  }
}

/// The unpickler (both modes), and the notebooks' vocab.pkl import on top of it.
inline void pickle(std::string_view data) {
  static const ScratchFile scratch("pickle");
  for (const bool allow_objects : {false, true}) {
    try {
      detail::UnpickleOptions options;
      options.allow_objects = allow_objects;
      std::size_t consumed = 0;
      detail::unpickle(data, options, "fuzz.pkl", &consumed);
      require(consumed <= data.size(), "unpickle consumed more than it was given");
    } catch (const Error&) {
    }
  }
  try {
    import_vocab_pickle(scratch.write(data));
  } catch (const Error&) {
  }
}

/// State-dict files: torch.save zip and legacy files, and safetensors, through load_weights().
inline void weights(std::string_view data) {
  static const ScratchFile scratch("weights");
  try {
    load_weights(scratch.write(data));
  } catch (const Error&) {
  }
}

/// safetensors bytes in memory.
inline void safetensors(std::string_view data) {
  try {
    std::map<std::string, std::string> metadata;
    const TensorMap tensors = parse_safetensors(data, "fuzz.safetensors", &metadata);
    require(tensors.total_numel() <= static_cast<std::int64_t>(data.size()),
            "tensors hold more elements than the file has bytes");
  } catch (const Error&) {
  }
}

/// imcap's own .imcap model files.
inline void model(std::string_view data) {
  static const ScratchFile scratch("model");
  try {
    CaptionModel::load(scratch.write(data));
  } catch (const Error&) {
  }
}

/// Every target with its name (the folder of its corpus, fuzz/corpus/<name>/).
inline const std::vector<std::pair<const char*, void (*)(std::string_view)>>& targets() {
  static const std::vector<std::pair<const char*, void (*)(std::string_view)>> all{
      {"image", image},   {"coco", coco},       {"vocabulary", vocabulary},
      {"pickle", pickle}, {"weights", weights}, {"safetensors", safetensors},
      {"model", model}};
  return all;
}

}  // namespace imcap::fuzz
