// UTF-8 checks shared by every reader of text from a file (private): annotations, vocabularies,
// pickles, results. Text is checked where it enters, so that a bad byte is reported with the file
// and the key it came from, not later by a JSON writer that names neither.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace imcap::detail {

/// The length of the well-formed UTF-8 sequence (RFC 3629: no overlong forms, no surrogates,
/// nothing above U+10FFFF) that starts at s[i], with its code point in `code_point`; 0 when the
/// bytes there are ill-formed.
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, std::uint32_t& code_point) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = byte(0);
  if (c < 0x80) {
    code_point = c;
    return 1;
  }
  std::size_t n = 0;
  std::uint32_t min = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2, min = 0x80, code_point = c & 0x1Fu;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, min = 0x800, code_point = c & 0x0Fu;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4, min = 0x10000, code_point = c & 0x07u;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(k) & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (byte(k) & 0x3Fu);
  }
  if (code_point < min || code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF))
    return 0;
  return n;
}

/// The offset of the first byte of s that is not part of well-formed UTF-8; npos when all is.
inline std::size_t find_invalid_utf8(std::string_view s) {
  std::uint32_t cp = 0;
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

/// Decodes well-formed UTF-8 into code points; false at the first ill-formed byte.
inline bool utf8_decode(std::string_view s, std::vector<std::uint32_t>& out) {
  std::uint32_t cp = 0;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0) return false;
    out.push_back(cp);
    i += n;
  }
  return true;
}

/// "" when s is well-formed UTF-8, else the reason for a message, e.g.
/// "ill-formed UTF-8 at byte 2 (0xff) of 'a \xff...'", quoting the valid text before it.
inline std::string utf8_problem(std::string_view s) {
  const std::size_t at = find_invalid_utf8(s);
  if (at == std::string_view::npos) return {};
  constexpr std::size_t kQuote = 40;
  const std::size_t from = at > kQuote ? at - kQuote : 0;
  // Start the quote on a character boundary: skip continuation bytes.
  std::size_t start = from;
  while (start < at && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) ++start;
  return fmt::format("ill-formed UTF-8 at byte {} (0x{:02x}), after '{}{}'", at,
                     static_cast<unsigned char>(s[at]), start > 0 ? "..." : "",
                     s.substr(start, at - start));
}

}  // namespace imcap::detail
