#include "detail/json_reader.hpp"

#include <fmt/format.h>

#include "detail/io.hpp"
#include "imcap/error.hpp"

namespace imcap::detail {

namespace {
constexpr int kMaxDepth = 512;
}

void JsonReader::syntax_error(const std::string& what) const {
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) {
    if (text_[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  throw FormatError(
      fmt::format("{}: not valid JSON: line {}, column {}: {}", name_, line, column, what));
}

void JsonReader::skip_ws() {
  while (pos_ < text_.size()) {
    const char c = text_[pos_];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
    ++pos_;
  }
}

char JsonReader::take() {
  if (pos_ >= text_.size()) syntax_error("unexpected end of the text");
  return text_[pos_++];
}

void JsonReader::expect(char c) {
  skip_ws();
  if (pos_ >= text_.size()) syntax_error(fmt::format("expected '{}', got the end of the text", c));
  if (text_[pos_] != c) syntax_error(fmt::format("expected '{}', got '{}'", c, text_[pos_]));
  ++pos_;
}

JsonReader::Kind JsonReader::peek() {
  skip_ws();
  if (pos_ >= text_.size()) syntax_error("expected a value, got the end of the text");
  switch (text_[pos_]) {
    case 'n':
      return Kind::kNull;
    case 't':
    case 'f':
      return Kind::kBool;
    case '"':
      return Kind::kString;
    case '[':
      return Kind::kArray;
    case '{':
      return Kind::kObject;
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9': {
      std::size_t i = pos_ + 1;
      while (i < text_.size() && ((text_[i] >= '0' && text_[i] <= '9'))) ++i;
      if (i < text_.size() && (text_[i] == '.' || text_[i] == 'e' || text_[i] == 'E'))
        return Kind::kFloat;
      return Kind::kInt;
    }
    default:
      syntax_error(fmt::format("unexpected character '{}'", text_[pos_]));
  }
}

const char* JsonReader::kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNull:
      return "null";
    case Kind::kBool:
      return "a boolean";
    case Kind::kInt:
      return "an integer";
    case Kind::kFloat:
      return "a floating-point number";
    case Kind::kString:
      return "a string";
    case Kind::kArray:
      return "an array";
    case Kind::kObject:
      return "an object";
  }
  return "a value";
}

void JsonReader::begin_object() {
  expect('{');
  if (++depth_ > kMaxDepth) syntax_error("nested too deeply");
  first_ = true;
}

bool JsonReader::next_key(std::string& key) {
  skip_ws();
  if (pos_ < text_.size() && text_[pos_] == '}') {
    ++pos_;
    --depth_;
    first_ = false;
    return false;
  }
  if (!first_) {
    expect(',');
    skip_ws();
    if (pos_ < text_.size() && text_[pos_] == '}') syntax_error("trailing comma before '}'");
  }
  first_ = false;
  read_string(key);
  expect(':');
  return true;
}

void JsonReader::begin_array() {
  expect('[');
  if (++depth_ > kMaxDepth) syntax_error("nested too deeply");
  first_ = true;
}

bool JsonReader::next_element() {
  skip_ws();
  if (pos_ < text_.size() && text_[pos_] == ']') {
    ++pos_;
    --depth_;
    first_ = false;
    return false;
  }
  if (!first_) {
    expect(',');
    skip_ws();
    if (pos_ < text_.size() && text_[pos_] == ']') syntax_error("trailing comma before ']'");
  }
  first_ = false;
  return true;
}

namespace {}  // namespace

void JsonReader::read_string(std::string& out) {
  skip_ws();
  if (pos_ >= text_.size() || text_[pos_] != '"') syntax_error("expected a string");
  ++pos_;
  out.clear();
  for (;;) {
    // Copy the run up to the next quote, backslash or control character in one go.
    std::size_t run = pos_;
    while (run < text_.size()) {
      const auto c = static_cast<unsigned char>(text_[run]);
      if (c == '"' || c == '\\' || c < 0x20) break;
      ++run;
    }
    out.append(text_.data() + pos_, run - pos_);
    pos_ = run;
    const char c = take();
    if (c == '"') return;
    if (c != '\\') syntax_error("control character inside a string");
    const char e = take();
    switch (e) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        auto hex4 = [&]() {
          std::uint32_t v = 0;
          for (int i = 0; i < 4; ++i) {
            const char h = take();
            v <<= 4;
            if (h >= '0' && h <= '9')
              v |= static_cast<std::uint32_t>(h - '0');
            else if (h >= 'a' && h <= 'f')
              v |= static_cast<std::uint32_t>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F')
              v |= static_cast<std::uint32_t>(h - 'A' + 10);
            else
              syntax_error("bad \\u escape");
          }
          return v;
        };
        std::uint32_t cp = hex4();
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (take() != '\\' || take() != 'u') syntax_error("unpaired UTF-16 surrogate");
          const std::uint32_t low = hex4();
          if (low < 0xDC00 || low > 0xDFFF) syntax_error("unpaired UTF-16 surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          syntax_error("unpaired UTF-16 surrogate");
        }
        detail::append_utf8(out, cp);
        break;
      }
      default:
        syntax_error(fmt::format("bad escape '\\{}'", e));
    }
  }
}

std::int64_t JsonReader::read_int() {
  skip_ws();
  bool negative = false;
  if (pos_ < text_.size() && text_[pos_] == '-') {
    negative = true;
    ++pos_;
  }
  if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9')
    syntax_error("expected a digit");
  std::uint64_t v = 0;
  const std::uint64_t limit = negative ? (std::uint64_t{1} << 63) : (std::uint64_t{1} << 63) - 1;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
    const auto d = static_cast<std::uint64_t>(text_[pos_] - '0');
    if (v > (limit - d) / 10) syntax_error("integer does not fit in 64 bits");
    v = v * 10 + d;
    ++pos_;
  }
  return negative ? static_cast<std::int64_t>(0 - v) : static_cast<std::int64_t>(v);
}

void JsonReader::skip_literal(std::string_view word) {
  if (text_.substr(pos_, word.size()) != word) syntax_error(fmt::format("expected '{}'", word));
  pos_ += word.size();
}

void JsonReader::skip_number() {
  if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
  auto digits = [&] {
    const std::size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    if (pos_ == start) syntax_error("expected a digit");
  };
  digits();
  if (pos_ < text_.size() && text_[pos_] == '.') {
    ++pos_;
    digits();
  }
  if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
    ++pos_;
    if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
    digits();
  }
}

void JsonReader::skip_value() {
  std::string scratch;
  switch (peek()) {
    case Kind::kNull:
      skip_literal("null");
      break;
    case Kind::kBool:
      skip_literal(text_[pos_] == 't' ? "true" : "false");
      break;
    case Kind::kInt:
    case Kind::kFloat:
      skip_number();
      break;
    case Kind::kString:
      read_string(scratch);
      break;
    case Kind::kArray:
      begin_array();
      while (next_element()) skip_value();
      break;
    case Kind::kObject:
      begin_object();
      while (next_key(scratch)) skip_value();
      break;
  }
}

void JsonReader::expect_end() {
  skip_ws();
  if (pos_ != text_.size()) syntax_error("unexpected text after the end of the value");
}

}  // namespace imcap::detail
