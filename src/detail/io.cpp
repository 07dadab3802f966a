// Private file helpers (detail/io.hpp).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "detail/io.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {

std::string errno_message(int err) { return std::strerror(err); }

namespace {

// Closes a file descriptor on scope exit.
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, std::string_view data, const std::string& path) {
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("{}: cannot write: {}", path, errno_message(errno)));
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace

std::string read_file(const std::string& path, std::uint64_t max_bytes) {
  FdGuard f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw IoError(fmt::format("{}: cannot open: {}", path, errno_message(errno)));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0)
    throw IoError(fmt::format("{}: cannot stat: {}", path, errno_message(errno)));
  if (S_ISDIR(st.st_mode)) throw IoError(fmt::format("{}: is a directory, expected a file", path));
  if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) > max_bytes)
    throw IoError(fmt::format("{}: file is {} bytes, more than the limit of {}", path,
                              static_cast<std::uint64_t>(st.st_size), max_bytes));
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("{}: cannot read: {}", path, errno_message(errno)));
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_bytes)
      throw IoError(fmt::format("{}: more than the limit of {} bytes", path, max_bytes));
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

namespace {

// The temporary files of write_file_atomic: hidden, and never ending in the target's extension,
// so that nothing mistakes a partial one for a valid file.
std::string temp_prefix(const std::string& path) { return "." + file_name(path) + ".tmp-"; }

// The file that writing to `path` lands in: path itself or, when its last component is a
// symbolic link, the link's target, followed as open() does (a dangling link names the file it
// would create). Renaming over the link itself would replace the link, not the file.
std::string follow_final_links(const std::string& path) {
  std::string p = path;
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::string target(static_cast<std::size_t>(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
    const ssize_t n = ::readlink(p.c_str(), target.data(), target.size());
    if (n < 0)
      throw IoError(fmt::format("{}: cannot read the symbolic link: {}", p, errno_message(errno)));
    target.resize(static_cast<std::size_t>(n));
    p = !target.empty() && target[0] == '/' ? target : join_path(parent_path(p), target);
  }
  throw IoError(fmt::format("{}: too many levels of symbolic links", path));
}

// Devices, FIFOs and sockets (/dev/null, /dev/stdout, a named pipe) are written in place: there
// is nothing to rename over them. A FIFO without a reader is an error, not a wait.
void write_in_place(const std::string& path, std::string_view data) {
  FdGuard f{::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)};
  if (f.fd < 0) {
    const int err = errno;
    throw IoError(err == ENXIO ? fmt::format("{}: no process is reading the pipe", path)
                               : fmt::format("{}: cannot open: {}", path, errno_message(err)));
  }
  const int flags = ::fcntl(f.fd, F_GETFL);
  if (flags >= 0) ::fcntl(f.fd, F_SETFL, flags & ~O_NONBLOCK);
  write_all(f.fd, data, path);
  const int rc = ::close(f.fd);
  f.fd = -1;
  if (rc != 0) throw IoError(fmt::format("{}: cannot close: {}", path, errno_message(errno)));
}

}  // namespace

void write_file_atomic(const std::string& requested, std::string_view data) {
  struct stat existing {};
  const bool exists = ::stat(requested.c_str(), &existing) == 0;
  if (exists && S_ISDIR(existing.st_mode))
    throw IoError(fmt::format("{}: is a folder, not a file", requested));
  if (exists && !S_ISREG(existing.st_mode)) {
    write_in_place(requested, data);
    return;
  }
  const std::string path = follow_final_links(requested);
  const std::string dir = parent_path(path);
  std::random_device rd;
  const std::string tmp = join_path(dir, fmt::format("{}{:08x}", temp_prefix(path), rd()));
  {
    FdGuard f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)};
    if (f.fd < 0)
      throw IoError(
          fmt::format("{}: cannot create a file in '{}': {}", path, dir, errno_message(errno)));
    try {
      // A replaced file keeps its permissions.
      if (exists && ::fchmod(f.fd, existing.st_mode & 07777) != 0)
        throw IoError(
            fmt::format("{}: cannot set the permissions: {}", path, errno_message(errno)));
      write_all(f.fd, data, path);
      if (::fsync(f.fd) != 0)
        throw IoError(fmt::format("{}: cannot sync to disk: {}", path, errno_message(errno)));
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
    const int rc = ::close(f.fd);
    f.fd = -1;
    if (rc != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      throw IoError(fmt::format("{}: cannot close: {}", path, errno_message(err)));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw IoError(fmt::format("{}: cannot rename the temporary file into place: {}", path,
                              errno_message(err)));
  }
  FdGuard d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd >= 0) ::fsync(d.fd);  // best effort: makes the rename itself durable
}

std::size_t remove_stale_temp_files(const std::string& path) {
  const std::string dir = parent_path(path);
  const std::string prefix = temp_prefix(path);
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return 0;
  std::size_t removed = 0;
  while (const dirent* entry = ::readdir(d.get())) {
    const std::string name = entry->d_name;
    if (name.size() == prefix.size() + 8 && name.compare(0, prefix.size(), prefix) == 0 &&
        name.find_first_not_of("0123456789abcdef", prefix.size()) == std::string::npos &&
        ::unlink(join_path(dir, name).c_str()) == 0)
      ++removed;
  }
  return removed;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string parent_path(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string file_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool has_parent_reference(const std::string& path) {
  std::size_t start = 0;
  for (;;) {
    const auto end = path.find('/', start);
    if (path.compare(start, end == std::string::npos ? std::string::npos : end - start, "..") == 0)
      return true;
    if (end == std::string::npos) return false;
    start = end + 1;
  }
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

void create_directories(const std::string& path) {
  if (path.empty() || is_directory(path)) return;
  const std::string parent = parent_path(path);
  if (parent != path && parent != "." && parent != "/") create_directories(parent);
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
    throw IoError(fmt::format("{}: cannot create the folder: {}", path, errno_message(errno)));
  if (!is_directory(path)) throw IoError(fmt::format("{}: exists and is not a folder", path));
}

}  // namespace imcap::detail
