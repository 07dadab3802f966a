// Image decoding: libjpeg-turbo (TurboJPEG API) for JPEG, stb_image for PNG, BMP and GIF (and for
// JPEG when imcap is built without libjpeg-turbo). No global state: stb's flip flag is never
// touched, its failure reason is thread-local, and each thread keeps its own TurboJPEG handle.
#include <fmt/format.h>

#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "detail/io.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"

#ifdef IMCAP_HAVE_TURBOJPEG
#include <turbojpeg.h>
#endif

// The implementation is compiled here, static, so that it cannot clash with another copy of
// stb_image linked into the same program. We read files ourselves (size limit, error messages).
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_JPEG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif
#include <stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace imcap {
namespace {

enum class Format { kJpeg, kPng, kBmp, kGif, kUnknown };

const char* format_name(Format f) {
  switch (f) {
    case Format::kJpeg:
      return "JPEG";
    case Format::kPng:
      return "PNG";
    case Format::kBmp:
      return "BMP";
    case Format::kGif:
      return "GIF";
    default:
      return "unknown";
  }
}

Format sniff(const unsigned char* p, std::size_t n) {
  static const unsigned char kPng[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return Format::kJpeg;
  if (n >= 8 && std::memcmp(p, kPng, 8) == 0) return Format::kPng;
  if (n >= 6 && (std::memcmp(p, "GIF87a", 6) == 0 || std::memcmp(p, "GIF89a", 6) == 0))
    return Format::kGif;
  if (n >= 2 && p[0] == 'B' && p[1] == 'M') return Format::kBmp;
  return Format::kUnknown;
}

std::string first_bytes(const unsigned char* p, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n && i < 8; ++i) out += fmt::format("{}{:02x}", i ? " " : "", p[i]);
  return out;
}

void check_pixels(const std::string& name, Format f, std::uint64_t w, std::uint64_t h,
                  const DecodeOptions& options) {
  if (w == 0 || h == 0)
    throw FormatError(
        fmt::format("{}: {} header declares an empty image ({}x{})", name, format_name(f), w, h));
  if (w * h > options.max_pixels)
    throw SecurityError(fmt::format(
        "{}: {} image is {}x{} = {} pixels, above the limit of {} (DecodeOptions::max_pixels)",
        name, format_name(f), w, h, w * h, options.max_pixels));
}

std::uint32_t be32(const unsigned char* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) |
         p[3];
}
std::uint32_t le32(const unsigned char* p) {
  return (std::uint32_t(p[3]) << 24) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[1]) << 8) |
         p[0];
}
std::uint32_t le16(const unsigned char* p) { return std::uint32_t(p[1]) << 8 | p[0]; }

// The image size declared by a PNG, GIF or BMP header, read here rather than by stb_image, which
// refuses images above 2^30 bytes with a vague message before we could apply max_pixels.
void check_header_size(const unsigned char* p, std::size_t n, const std::string& name, Format f,
                       const DecodeOptions& options) {
  std::uint64_t w = 0, h = 0;
  if (f == Format::kPng) {
    // signature, IHDR length and type, width, height
    if (n < 24 || std::memcmp(p + 12, "IHDR", 4) != 0)
      throw FormatError(fmt::format("{}: truncated PNG header (no IHDR chunk)", name));
    w = be32(p + 16);
    h = be32(p + 20);
  } else if (f == Format::kGif) {
    if (n < 10) throw FormatError(fmt::format("{}: truncated GIF header", name));
    w = le16(p + 6);
    h = le16(p + 8);
  } else if (f == Format::kBmp) {
    if (n < 26) throw FormatError(fmt::format("{}: truncated BMP header", name));
    if (le32(p + 14) == 12) {  // OS/2 BITMAPCOREHEADER: 16-bit sizes
      w = le16(p + 18);
      h = le16(p + 20);
    } else {
      const auto sw = static_cast<std::int32_t>(le32(p + 18));
      const auto sh = static_cast<std::int32_t>(le32(p + 22));  // negative: top-down rows
      w = static_cast<std::uint64_t>(sw < 0 ? -std::int64_t(sw) : sw);
      h = static_cast<std::uint64_t>(sh < 0 ? -std::int64_t(sh) : sh);
      // stb_image reads past the end of a truncated BMP as zeros: check uncompressed pixel data.
      const std::uint32_t compression = n >= 34 ? le32(p + 30) : 0;
      const std::uint64_t bpp = n >= 30 ? le16(p + 28) : 0;
      if (n >= 34 && (compression == 0 || compression == 3) && bpp > 0 && w <= UINT32_MAX) {
        const std::uint64_t needed = le32(p + 10) + (bpp * w + 31) / 32 * 4 * h;
        if (w * h <= options.max_pixels && n < needed)
          throw FormatError(
              fmt::format("{}: truncated BMP: {} bytes, the header needs {}", name, n, needed));
      }
    }
  } else {
    return;
  }
  check_pixels(name, f, w, h, options);
}

std::string chunk_type_name(const unsigned char* t) {
  std::string out;
  for (int i = 0; i < 4; ++i)
    out += (t[i] >= 0x20 && t[i] < 0x7f) ? std::string(1, static_cast<char>(t[i]))
                                         : fmt::format("\\x{:02x}", t[i]);
  return out;
}

// Walks a PNG's chunks up to IEND and checks that each one lies inside the data. stb_image trusts
// a chunk's declared length and grows its IDAT buffer to it before reading, so a 100-byte file
// could make it allocate 2 GiB. Critical chunks other than those stb_image knows are refused here:
// stb_image would write their name into a static buffer for its message, a race between threads.
// IEND's CRC may be missing (stb_image never reads it). Returns true, and fills `cleaned`, when the
// data must be rewritten without the empty IDAT chunks that precede the first non-empty one:
// stb_image copies those with memcpy into its still-null buffer, which is undefined behaviour. An
// empty chunk carries no data, so dropping it changes nothing else.
bool check_png_chunks(const unsigned char* p, std::size_t n, const std::string& name,
                      std::string& cleaned) {
  std::size_t off = 8;  // after the signature
  bool seen_idat_data = false;
  std::vector<std::size_t> drop;  // offsets of the 12-byte empty IDAT chunks to leave out
  for (;;) {
    if (off == n)
      throw FormatError(fmt::format("{}: truncated PNG: no IEND chunk after {} bytes", name, n));
    const bool iend_without_crc =
        n - off >= 8 && n - off < 12 && std::memcmp(p + off, "\0\0\0\0IEND", 8) == 0;
    if (n - off < 12 && !iend_without_crc)
      throw FormatError(fmt::format(
          "{}: truncated PNG: the chunk at offset {} needs at least 12 bytes, {} remain", name, off,
          n - off));
    const std::uint32_t length = be32(p + off);
    const unsigned char* type = p + off + 4;
    if (length > 0x7fffffffu)
      throw FormatError(fmt::format(
          "{}: malformed PNG: chunk '{}' at offset {} declares {} bytes, above the PNG limit of "
          "2^31-1",
          name, chunk_type_name(type), off, length));
    if (iend_without_crc) break;
    if (length > n - off - 12)
      throw FormatError(fmt::format(
          "{}: truncated PNG: chunk '{}' at offset {} declares {} bytes of data, {} remain", name,
          chunk_type_name(type), off, length, n - off - 12));
    const bool critical = (type[0] & 0x20) == 0;
    if (critical && std::memcmp(type, "IHDR", 4) != 0 && std::memcmp(type, "PLTE", 4) != 0 &&
        std::memcmp(type, "IDAT", 4) != 0 && std::memcmp(type, "IEND", 4) != 0 &&
        std::memcmp(type, "CgBI", 4) != 0)
      throw FormatError(fmt::format("{}: unsupported PNG: unknown critical chunk '{}' at offset {}",
                                    name, chunk_type_name(type), off));
    if (std::memcmp(type, "IDAT", 4) == 0) {
      if (length == 0 && !seen_idat_data) drop.push_back(off);
      seen_idat_data = seen_idat_data || length > 0;
    }
    off += 12 + std::size_t{length};
    if (std::memcmp(type, "IEND", 4) == 0) break;
  }
  if (drop.empty()) return false;
  cleaned.clear();
  cleaned.reserve(n);
  std::size_t from = 0;
  for (std::size_t at : drop) {
    cleaned.append(reinterpret_cast<const char*>(p) + from, at - from);
    from = at + 12;
  }
  cleaned.append(reinterpret_cast<const char*>(p) + from, n - from);
  return true;
}

Image decode_stb(const unsigned char* data, std::size_t size, const std::string& name, Format f,
                 const DecodeOptions& options) {
  check_header_size(data, size, name, f, options);
  std::string cleaned;
  if (f == Format::kPng && check_png_chunks(data, size, name, cleaned)) {
    data = reinterpret_cast<const unsigned char*>(cleaned.data());
    size = cleaned.size();
  }
  if (size > static_cast<std::size_t>(INT32_MAX))
    throw FormatError(
        fmt::format("{}: {} data of {} bytes is too large to decode", name, format_name(f), size));
  const int len = static_cast<int>(size);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &comp))
    throw FormatError(fmt::format("{}: malformed or unsupported {} header: {}", name,
                                  format_name(f), stbi_failure_reason()));
  // stb_image reports a top-down BMP's height as the header's negative value (its loader flips
  // the rows and returns the positive height).
  if (f == Format::kBmp && h < 0 && h != INT_MIN) h = -h;
  if (w <= 0 || h <= 0)
    throw FormatError(
        fmt::format("{}: {} header declares an image of {}x{}; expected a positive "
                    "width and height",
                    name, format_name(f), w, h));
  check_pixels(name, f, static_cast<std::uint64_t>(w), static_cast<std::uint64_t>(h), options);
  // For GIF, stbi_load_from_memory returns the first frame.
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(data, len, &w, &h, &comp, 3), stbi_image_free);
  if (!pixels)
    throw FormatError(
        fmt::format("{}: cannot decode {} data: {}", name, format_name(f), stbi_failure_reason()));
  Image out;
  out.width = w;
  out.height = h;
  out.pixels.assign(pixels.get(), pixels.get() + static_cast<std::size_t>(w) * h * 3);
  return out;
}

#ifdef IMCAP_HAVE_TURBOJPEG

// Whether an Adobe APP14 segment precedes the first scan: Adobe writes CMYK inverted
// (0 = full ink), and PIL reads such files as "CMYK;I". Walks the marker segments only.
bool has_adobe_marker(const unsigned char* p, std::size_t n) {
  std::size_t i = 2;  // after SOI
  while (i + 4 <= n) {
    if (p[i] != 0xff) return false;
    const unsigned char marker = p[i + 1];
    if (marker == 0xff) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0xda || marker == 0xd9) return false;  // SOS, EOI
    const std::size_t len = (static_cast<std::size_t>(p[i + 2]) << 8) | p[i + 3];
    if (len < 2 || i + 2 + len > n) return false;
    if (marker == 0xee && len >= 7 && std::memcmp(p + i + 4, "Adobe", 5) == 0) return true;
    i += 2 + len;
  }
  return false;
}

// One decompressor per thread: creating one costs more than decoding a small JPEG's header.
// After a failed decode the handle is dropped, since libjpeg may keep state from the bad file.
class ThreadDecompressor {
 public:
  static tjhandle get() {
    auto& slot = instance();
    if (!slot.handle_) slot.handle_ = tjInitDecompress();
    if (!slot.handle_)
      throw FormatError(
          fmt::format("cannot create a TurboJPEG decompressor: {}", tjGetErrorStr2(nullptr)));
    return slot.handle_;
  }
  static void discard() {
    auto& slot = instance();
    if (slot.handle_) tjDestroy(slot.handle_);
    slot.handle_ = nullptr;
  }
  ~ThreadDecompressor() {
    if (handle_) tjDestroy(handle_);
  }

 private:
  static ThreadDecompressor& instance() {
    thread_local ThreadDecompressor slot;
    return slot;
  }
  tjhandle handle_ = nullptr;
};

[[noreturn]] void jpeg_fail(const std::string& message) {
  ThreadDecompressor::discard();
  throw FormatError(message);
}

Image decode_turbojpeg(const unsigned char* data, std::size_t size, const std::string& name,
                       const DecodeOptions& options) {
  if (size > static_cast<std::size_t>(ULONG_MAX))
    throw FormatError(fmt::format("{}: JPEG data too large", name));
  tjhandle tj = ThreadDecompressor::get();
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, data, static_cast<unsigned long>(size), &w, &h, &subsamp,
                          &colorspace) != 0)
    jpeg_fail(
        fmt::format("{}: malformed or unsupported JPEG header: {}", name, tjGetErrorStr2(tj)));
  check_pixels(name, Format::kJpeg, static_cast<std::uint64_t>(w), static_cast<std::uint64_t>(h),
               options);

  int out_w = w, out_h = h;
  if (options.min_shorter_side > 0) {
    int count = 0;
    const tjscalingfactor* factors = tjGetScalingFactors(&count);
    const int shorter = std::min(w, h);
    for (int i = 0; factors && i < count; ++i) {
      const tjscalingfactor f = factors[i];
      // Only 1/2, 1/4 and 1/8: libjpeg-turbo has SIMD code for these reduced IDCTs, while the
      // other factors (3/8, 5/8, ...) use plain C and decode slower than full size.
      if (f.num != 1 || (f.denom != 2 && f.denom != 4 && f.denom != 8)) continue;
      const int sw = TJSCALED(w, f), sh = TJSCALED(h, f);
      if (std::min(sw, sh) >= std::min(options.min_shorter_side, shorter) &&
          std::int64_t{sw} * sh < std::int64_t{out_w} * out_h) {
        out_w = sw;
        out_h = sh;
      }
    }
  }

  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  const int channels = cmyk ? 4 : 3;
  std::vector<unsigned char> buffer;
  Image out;
  out.width = out_w;
  out.height = out_h;
  unsigned char* dst = nullptr;
  if (cmyk) {
    buffer.resize(static_cast<std::size_t>(out_w) * out_h * 4);
    dst = buffer.data();
  } else {
    out.pixels.resize(static_cast<std::size_t>(out_w) * out_h * 3);
    dst = out.pixels.data();
  }
  // Default flags: accurate integer IDCT and fancy upsampling, as PIL decodes.
  const int flags = TJFLAG_LIMITSCANS;
  const int rc = tjDecompress2(tj, data, static_cast<unsigned long>(size), dst, out_w,
                               out_w * channels, out_h, cmyk ? TJPF_CMYK : TJPF_RGB, flags);
  if (rc != 0) {
    const bool warning = tjGetErrorCode(tj) == TJERR_WARNING;
    if (!warning || !options.accept_jpeg_warnings)
      jpeg_fail(fmt::format("{}: {} JPEG data: {}", name,
                            warning ? "corrupt or truncated" : "cannot decode",
                            tjGetErrorStr2(tj)));
  }
  if (cmyk) {
    // PIL: CMYK -> RGB is r = 255 - c - k*(255 - c)/255 (per channel, rounded), applied to the
    // un-inverted values.
    const bool inverted = has_adobe_marker(data, size);
    out.pixels.resize(static_cast<std::size_t>(out_w) * out_h * 3);
    const std::size_t n = static_cast<std::size_t>(out_w) * out_h;
    for (std::size_t i = 0; i < n; ++i) {
      const unsigned char* s = buffer.data() + i * 4;
      const int k = inverted ? 255 - s[3] : s[3];
      const int nk = 255 - k;
      for (int c = 0; c < 3; ++c) {
        const int v = inverted ? 255 - s[c] : s[c];
        const int t = v * nk + 128;
        const int r = nk - ((t + (t >> 8)) >> 8);
        out.pixels[i * 3 + c] = static_cast<std::uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
      }
    }
  }
  return out;
}

#endif  // IMCAP_HAVE_TURBOJPEG

}  // namespace

Image decode_image_memory(const void* data, std::size_t size, const std::string& name,
                          const DecodeOptions& options) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  if (size == 0 || bytes == nullptr)
    throw FormatError(
        fmt::format("{}: empty file (0 bytes), expected a JPEG, PNG, BMP or GIF image", name));
  const Format f = sniff(bytes, size);
  switch (f) {
    case Format::kJpeg:
#ifdef IMCAP_HAVE_TURBOJPEG
      return decode_turbojpeg(bytes, size, name, options);
#else
      return decode_stb(bytes, size, name, f, options);
#endif
    case Format::kPng:
    case Format::kBmp:
    case Format::kGif:
      return decode_stb(bytes, size, name, f, options);
    default:
      throw FormatError(fmt::format(
          "{}: unrecognised image format (first bytes: {}), expected a JPEG, PNG, BMP or GIF image",
          name, first_bytes(bytes, size)));
  }
}

Image decode_image(const std::string& path, const DecodeOptions& options) {
  const std::string data = detail::read_file(path, options.max_file_bytes);
  return decode_image_memory(data.data(), data.size(), path, options);
}

}  // namespace imcap
