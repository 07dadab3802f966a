// Helpers shared by the CLI subcommands (private to the imcap executable).
#pragma once

#include <string>

#include <torch/types.h>
#include <CLI/CLI.hpp>

namespace imcap::cli {

/// Thrown by a subcommand for bad usage that CLI11 cannot see (e.g. two options that conflict
/// in value); main() prints it and exits with code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Sets the number of intra-op threads Torch uses (0: one per core), and OpenBLAS's to 1 when
/// Torch's are several, so that the two thread pools do not compete for the cores.
void set_threads(int threads);
/// Sets OpenBLAS's own thread count when OpenBLAS is loaded; returns whether it was.
bool set_blas_threads(int threads);
/// OpenBLAS's thread count, 0 when OpenBLAS is not loaded.
int blas_threads();

/// "cpu", "cuda" or "cuda:N" as a device; throws InvalidArgument when CUDA is unavailable and
/// UsageError for other names.
torch::Device parse_device(const std::string& name);

/// Writes text to path crash-safely (temporary file + rename); throws imcap::IoError.
void write_output_file(const std::string& path, const std::string& text);

}  // namespace imcap::cli
