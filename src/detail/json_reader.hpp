// A fast pull reader for JSON text (private). It parses in place, without building a document,
// which makes reading a 23 MB COCO annotation file ~10x faster than a DOM parser. Syntax errors
// throw FormatError naming the source, line and column.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace imcap::detail {

class JsonReader {
 public:
  enum class Kind { kNull, kBool, kInt, kFloat, kString, kArray, kObject };

  JsonReader(std::string_view text, std::string name) : text_(text), name_(std::move(name)) {}

  /// The kind of the next value (after whitespace), without consuming it.
  Kind peek();
  /// "null", "a string", ... for messages.
  static const char* kind_name(Kind kind);

  /// Starts an object; then call next_key() until it returns false.
  void begin_object();
  /// Reads the next key of the current object into `key`; false at its closing brace.
  bool next_key(std::string& key);
  /// Starts an array; then call next_element() until it returns false.
  void begin_array();
  /// True when another element follows in the current array; false at its closing bracket.
  bool next_element();

  /// Reads a string value (escapes decoded, UTF-8 output).
  void read_string(std::string& out);
  /// Reads an integer value that fits in int64.
  std::int64_t read_int();
  /// Skips any value.
  void skip_value();
  /// Checks that only whitespace remains.
  void expect_end();

  [[noreturn]] void syntax_error(const std::string& what) const;

 private:
  void skip_ws();
  char take();
  void expect(char c);
  void skip_literal(std::string_view word);
  void skip_number();
  void after_value_in_container();

  std::string_view text_;
  std::string name_;
  std::size_t pos_ = 0;
  int depth_ = 0;
  bool first_ = true;  // no element/key read yet in the container just opened
};

}  // namespace imcap::detail
