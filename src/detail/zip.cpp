// Minimal stored-zip reader (detail/zip.hpp), enough for torch.save archives, zip64 included.
#include "detail/zip.hpp"

#include <array>

#include <fmt/format.h>

#include "imcap/error.hpp"

namespace imcap::detail {

namespace {

constexpr std::uint32_t kLocalHeaderSig = 0x04034b50;
constexpr std::uint32_t kCentralHeaderSig = 0x02014b50;
constexpr std::uint32_t kEndSig = 0x06054b50;
constexpr std::uint32_t kEnd64Sig = 0x06064b50;
constexpr std::uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr std::size_t kEndSize = 22;
constexpr std::size_t kEnd64LocatorSize = 20;
constexpr std::size_t kEnd64Size = 56;
constexpr std::size_t kCentralHeaderSize = 46;
constexpr std::size_t kLocalHeaderSize = 30;
constexpr std::size_t kMaxCommentSize = 0xFFFF;
constexpr std::uint16_t kZip64ExtraId = 0x0001;

// Bounds-checked little-endian reads from the archive.
class Cursor {
 public:
  Cursor(std::string_view data, const std::string& name) : data_(data), name_(name) {}

  std::uint64_t read(std::uint64_t offset, int bytes, const char* what) const {
    need(offset, static_cast<std::uint64_t>(bytes), what);
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i)
      v = (v << 8) | static_cast<unsigned char>(data_[offset + static_cast<std::uint64_t>(i)]);
    return v;
  }
  std::string_view slice(std::uint64_t offset, std::uint64_t size, const char* what) const {
    need(offset, size, what);
    return data_.substr(offset, size);
  }
  void need(std::uint64_t offset, std::uint64_t size, const char* what) const {
    if (offset > data_.size() || size > data_.size() - offset)
      throw FormatError(
          fmt::format("{}: zip {} at offset {} (size {}) lies beyond the end of the "
                      "{}-byte file",
                      name_, what, offset, size, data_.size()));
  }

 private:
  std::string_view data_;
  const std::string& name_;
};

const std::array<std::uint32_t, 256>& crc_table() {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

}  // namespace

std::uint32_t crc32(std::string_view data) {
  const auto& t = crc_table();
  std::uint32_t c = 0xFFFFFFFFu;
  for (const char ch : data) c = t[(c ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

bool looks_like_zip(std::string_view data) {
  return data.size() >= 4 && data.substr(0, 4) == std::string_view("PK\x03\x04", 4);
}

ZipArchive::ZipArchive(std::string_view data, std::string name, bool verify_crc)
    : name_(std::move(name)) {
  const Cursor in(data, name_);
  if (data.size() < kEndSize)
    throw FormatError(fmt::format("{}: not a zip archive: only {} bytes", name_, data.size()));
  // The end-of-central-directory record is the last one whose comment reaches the end exactly.
  std::uint64_t end = 0;
  bool found = false;
  const std::uint64_t lowest =
      data.size() > kEndSize + kMaxCommentSize ? data.size() - kEndSize - kMaxCommentSize : 0;
  for (std::uint64_t p = data.size() - kEndSize + 1; p-- > lowest;) {
    if (in.read(p, 4, "end record") == kEndSig &&
        p + kEndSize + in.read(p + 20, 2, "end record") == data.size()) {
      end = p;
      found = true;
      break;
    }
  }
  if (!found)
    throw FormatError(fmt::format("{}: not a zip archive (no end of central directory)", name_));
  std::uint64_t count = in.read(end + 10, 2, "end record");
  std::uint64_t cd_size = in.read(end + 12, 4, "end record");
  std::uint64_t cd_offset = in.read(end + 16, 4, "end record");
  if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
    if (end < kEnd64LocatorSize ||
        in.read(end - kEnd64LocatorSize, 4, "zip64 locator") != kEnd64LocatorSig)
      throw FormatError(fmt::format("{}: zip64 archive without a zip64 locator", name_));
    const std::uint64_t end64 = in.read(end - kEnd64LocatorSize + 8, 8, "zip64 locator");
    in.need(end64, kEnd64Size, "zip64 end record");
    if (in.read(end64, 4, "zip64 end record") != kEnd64Sig)
      throw FormatError(fmt::format("{}: bad zip64 end of central directory", name_));
    count = in.read(end64 + 32, 8, "zip64 end record");
    cd_size = in.read(end64 + 40, 8, "zip64 end record");
    cd_offset = in.read(end64 + 48, 8, "zip64 end record");
  }
  in.need(cd_offset, cd_size, "central directory");
  if (count > cd_size / kCentralHeaderSize)
    throw FormatError(fmt::format("{}: zip central directory of {} bytes cannot hold {} entries",
                                  name_, cd_size, count));

  std::uint64_t p = cd_offset;
  const std::uint64_t cd_end = cd_offset + cd_size;
  for (std::uint64_t i = 0; i < count; ++i) {
    if (p + kCentralHeaderSize > cd_end || in.read(p, 4, "central header") != kCentralHeaderSig)
      throw FormatError(fmt::format("{}: zip central directory entry {} is malformed", name_, i));
    const auto flags = in.read(p + 8, 2, "central header");
    const auto method = in.read(p + 10, 2, "central header");
    const auto crc = static_cast<std::uint32_t>(in.read(p + 16, 4, "central header"));
    std::uint64_t csize = in.read(p + 20, 4, "central header");
    std::uint64_t usize = in.read(p + 24, 4, "central header");
    const auto name_len = in.read(p + 28, 2, "central header");
    const auto extra_len = in.read(p + 30, 2, "central header");
    const auto comment_len = in.read(p + 32, 2, "central header");
    std::uint64_t local = in.read(p + 42, 4, "central header");
    const std::uint64_t next = p + kCentralHeaderSize + name_len + extra_len + comment_len;
    if (next > cd_end)
      throw FormatError(fmt::format("{}: zip central directory entry {} overruns it", name_, i));
    std::string entry(in.slice(p + kCentralHeaderSize, name_len, "entry name"));
    // Zip64 extended information: the 64-bit values of the fields saturated above, in order.
    std::uint64_t e = p + kCentralHeaderSize + name_len;
    const std::uint64_t e_end = e + extra_len;
    while (e + 4 <= e_end) {
      const auto id = in.read(e, 2, "extra field");
      const auto len = in.read(e + 2, 2, "extra field");
      if (e + 4 + len > e_end)
        throw FormatError(fmt::format("{}: zip entry '{}': bad extra field", name_, entry));
      if (id == kZip64ExtraId) {
        std::uint64_t q = e + 4;
        const auto take = [&](std::uint64_t& field) {
          if (field != 0xFFFFFFFF) return;
          if (q + 8 > e + 4 + len)
            throw FormatError(fmt::format("{}: zip entry '{}': short zip64 field", name_, entry));
          field = in.read(q, 8, "zip64 field");
          q += 8;
        };
        take(usize);
        take(csize);
        take(local);
      }
      e += 4 + len;
    }
    if (flags & 0x1)
      throw FormatError(fmt::format("{}: zip entry '{}' is encrypted", name_, entry));
    if (method != 0)
      throw FormatError(
          fmt::format("{}: zip entry '{}' is compressed (method {}); only stored "
                      "entries are supported, as torch.save writes them",
                      name_, entry, method));
    if (csize != usize)
      throw FormatError(fmt::format("{}: zip entry '{}': stored sizes differ ({} vs {})", name_,
                                    entry, csize, usize));
    in.need(local, kLocalHeaderSize, "local header");
    if (in.read(local, 4, "local header") != kLocalHeaderSig)
      throw FormatError(fmt::format("{}: zip entry '{}': bad local header", name_, entry));
    const std::uint64_t data_start = local + kLocalHeaderSize +
                                     in.read(local + 26, 2, "local header") +
                                     in.read(local + 28, 2, "local header");
    const auto bytes = in.slice(data_start, usize, "entry data");
    if (verify_crc && crc32(bytes) != crc)
      throw FormatError(
          fmt::format("{}: zip entry '{}': CRC-32 mismatch (corrupt file)", name_, entry));
    if (!entries_.emplace(entry, bytes).second)
      throw FormatError(fmt::format("{}: zip entry '{}' appears twice", name_, entry));
    names_.push_back(std::move(entry));
    p = next;
  }
}

std::string_view ZipArchive::at(const std::string& entry) const {
  const auto it = entries_.find(entry);
  if (it == entries_.end())
    throw FormatError(fmt::format("{}: zip archive has no entry '{}'", name_, entry));
  return it->second;
}

}  // namespace imcap::detail
