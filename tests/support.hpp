// Helpers shared by the imcap tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "imcap/decoder.hpp"

namespace imcap::test {

/// A single-layer decoder (pre-inject unless told) with random weights drawn after
/// manual_seed(seed), in eval mode.
imcap::Decoder eval_decoder(int64_t vocab, int64_t embed, int64_t hidden, uint64_t seed,
                            imcap::ImageInject inject = imcap::ImageInject::kPre);

/// Path of a file under tests/data.
std::string data_path(const std::string& name);
/// Path of a script under tests/python.
std::string python_script(const std::string& name);

/// A fresh empty directory, removed when the object goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  /// path()/name
  std::string file(const std::string& name) const;

 private:
  std::string path_;
};

/// What a finished child process left.
struct ProcessResult {
  int exit_code = -1;  ///< exit status, or 128 + signal number if it was killed by a signal
  std::string out;     ///< standard output
  std::string err;     ///< standard error
};

/// Starts a program with arguments (no shell), the current environment plus `extra_env`
/// ("NAME=value" entries), stdin from /dev/null and stdout and stderr into the given files.
/// Returns its process id (throws when fork fails); the caller waits for it.
int start_process(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                  const std::string& out_path, const std::string& err_path);
/// Runs a program with arguments (no shell), capturing stdout and stderr.
ProcessResult run_process(const std::vector<std::string>& argv);
/// Runs the imcap CLI built with the tests.
ProcessResult run_cli(const std::vector<std::string>& args);
/// Runs Debian's /usr/bin/python3 with a script from tests/python and its arguments. The
/// reference outputs of parity tests come from there (python3-torch, python3-torchvision).
ProcessResult run_python(const std::string& script, const std::vector<std::string>& args);

/// Writes an 8-bit image (channels 1, 3 or 4, rows top to bottom) as PNG.
void write_png(const std::string& path, int width, int height, int channels,
               const std::vector<unsigned char>& pixels);
/// Writes an RGB image of width x height with a deterministic pattern from `seed` as PNG.
void write_pattern_png(const std::string& path, int width, int height, unsigned seed);

/// Writes text to a file (tests only; throws std::runtime_error on failure).
void write_text(const std::string& path, const std::string& text);
/// Reads a whole file (throws std::runtime_error on failure).
std::string read_text(const std::string& path);

}  // namespace imcap::test
