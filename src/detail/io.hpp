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
/// fsync of the folder. A crash at any moment leaves either the old file or the new one. A
/// replaced file keeps its permissions; a symbolic link is followed (its target is replaced, not
/// the link); devices and FIFOs (/dev/stdout, a named pipe) are written in place. Throws IoError
/// naming the file (disk full, unwritable folder, a folder at path, a pipe nobody reads, ...).
void write_file_atomic(const std::string& path, std::string_view data);

/// Removes the temporary files that write_file_atomic(path, ...) leaves when its process is
/// killed mid-write (".NAME.tmp-XXXXXXXX" next to path); returns how many it removed. Only for
/// paths no other process is writing at the same time.
std::size_t remove_stale_temp_files(const std::string& path);

/// Appends the UTF-8 encoding of a code point (at most U+10FFFF) to out.
void append_utf8(std::string& out, std::uint32_t code_point);

// Path helpers on POSIX calls. imcap avoids std::filesystem: PyTorch 2.5+ wheels export a
// statically linked copy of its symbols (pytorch/pytorch#133437), and a program that links such
// a LibTorch and calls std::filesystem can crash.

/// a + "/" + b, without doubling a trailing slash; b when a is empty.
std::string join_path(const std::string& a, const std::string& b);
/// The part before the last '/', "." when there is none.
std::string parent_path(const std::string& path);
/// The part after the last '/'.
std::string file_name(const std::string& path);
/// Whether any '/'-separated component of path is "..".
bool has_parent_reference(const std::string& path);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);
/// Whether a and b name the same existing file (after symbolic links; hard links included).
bool same_file(const std::string& a, const std::string& b);
/// mkdir -p; throws IoError naming the folder on failure.
void create_directories(const std::string& path);

}  // namespace imcap::detail
