// File helpers shared by every reader and writer in imcap (private).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace imcap::detail {

/// strerror(err) as a std::string.
std::string errno_message(int err);

/// Reads a whole file. Throws IoError naming the file when it cannot be opened or read, and
/// when it is larger than max_bytes.
std::string read_file(const std::string& path, std::uint64_t max_bytes = UINT64_MAX);

/// Writes data to path crash-safely: a temporary file in the same folder, fsync, rename, then
/// fsync of the folder. A crash at any moment leaves either the old file or the new one.
/// Throws IoError naming the file (disk full, unwritable folder, ...).
void write_file_atomic(const std::string& path, std::string_view data);

}  // namespace imcap::detail
