// safetensors reader and writer (declared in imcap/weights.hpp), following the format's
// specification: https://github.com/huggingface/safetensors#format
#include "imcap/weights.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

constexpr std::size_t kLengthBytes = 8;
// The reference implementation refuses larger headers too.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::size_t kHeaderAlignment = 8;
constexpr const char* kMetadataKey = "__metadata__";

struct DType {
  std::string_view name;
  torch::ScalarType type;
};

constexpr DType kDTypes[] = {
    {"F64", torch::kDouble},    {"F32", torch::kFloat}, {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16}, {"I64", torch::kLong},  {"I32", torch::kInt},
    {"I16", torch::kShort},     {"I8", torch::kChar},   {"U8", torch::kByte},
    {"BOOL", torch::kBool},
};

struct Entry {
  std::string name;
  torch::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

Entry parse_entry(const std::string& name, const nlohmann::json& info, const std::string& file) {
  const auto fail = [&](const std::string& why) {
    throw FormatError(fmt::format("{}: tensor '{}': {}", file, name, why));
  };
  if (!info.is_object()) fail("header entry is not an object");
  for (const auto& [key, value] : info.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(fmt::format("unknown header field '{}'", key));
  }
  if (!info.contains("dtype") || !info["dtype"].is_string()) fail("missing string 'dtype'");
  if (!info.contains("shape") || !info["shape"].is_array()) fail("missing array 'shape'");
  if (!info.contains("data_offsets") || !info["data_offsets"].is_array() ||
      info["data_offsets"].size() != 2)
    fail("missing 'data_offsets' [begin, end]");
  Entry e;
  e.name = name;
  const auto dtype = info["dtype"].get<std::string>();
  const auto it = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                               [&](const DType& d) { return d.name == dtype; });
  if (it == std::end(kDTypes)) fail(fmt::format("unsupported dtype '{}'", dtype));
  e.dtype = it->type;
  std::uint64_t numel = 1;
  for (const auto& d : info["shape"]) {
    if (!d.is_number_unsigned()) fail("shape holds a value that is not a non-negative integer");
    const auto n = d.get<std::uint64_t>();
    if (n > static_cast<std::uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, n, &numel))
      fail("shape overflows");
    e.shape.push_back(static_cast<std::int64_t>(n));
  }
  for (const auto& o : info["data_offsets"]) {
    if (!o.is_number_unsigned()) fail("data_offsets are not non-negative integers");
  }
  e.begin = info["data_offsets"][0].get<std::uint64_t>();
  e.end = info["data_offsets"][1].get<std::uint64_t>();
  if (e.end < e.begin)
    fail(fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
  std::uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(c10::elementSize(e.dtype)),
                             &bytes) ||
      bytes != e.end - e.begin)
    fail(fmt::format("{} {} elements need {} bytes, data_offsets [{}, {}] hold {}", numel, dtype,
                     bytes, e.begin, e.end, e.end - e.begin));
  return e;
}

// Builds the header's DOM like nlohmann::json::parse and remembers the first top-level key seen
// twice: nlohmann keeps the last of duplicate keys, the format forbids them. A parse callback
// could see the keys too, but nlohmann's callback parser scans the whole parent object after
// each nested object ends, which is quadratic in the number of tensors.
class DuplicateKeyParser : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit DuplicateKeyParser(nlohmann::json& result) : dom_(result) {}

  const std::string& duplicate() const { return duplicate_; }

  bool null() override { return dom_.null(); }
  bool boolean(bool v) override { return dom_.boolean(v); }
  bool number_integer(number_integer_t v) override { return dom_.number_integer(v); }
  bool number_unsigned(number_unsigned_t v) override { return dom_.number_unsigned(v); }
  bool number_float(number_float_t v, const string_t& s) override {
    return dom_.number_float(v, s);
  }
  bool string(string_t& v) override { return dom_.string(v); }
  bool binary(binary_t& v) override { return dom_.binary(v); }
  bool start_object(std::size_t n) override {
    ++depth_;
    return dom_.start_object(n);
  }
  bool key(string_t& v) override {
    if (depth_ == 1 && !keys_.insert(v).second && duplicate_.empty()) duplicate_ = v;
    return dom_.key(v);
  }
  bool end_object() override {
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) override {
    ++depth_;
    return dom_.start_array(n);
  }
  bool end_array() override {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::json::exception& e) override {
    return dom_.parse_error(position, last_token, e);
  }

 private:
  nlohmann::detail::json_sax_dom_parser<nlohmann::json> dom_;
  int depth_ = 0;
  std::unordered_set<std::string> keys_;
  std::string duplicate_;
};

std::string_view dtype_name(torch::ScalarType type, const std::string& tensor) {
  for (const auto& d : kDTypes) {
    if (d.type == type) return d.name;
  }
  throw InvalidArgument(fmt::format("tensor '{}': dtype {} cannot be stored in safetensors", tensor,
                                    c10::toString(type)));
}

}  // namespace

TensorMap parse_safetensors(std::string_view bytes, const std::string& name,
                            std::map<std::string, std::string>* metadata) {
  if (bytes.size() < kLengthBytes)
    throw FormatError(
        fmt::format("{}: {} bytes: too short for a safetensors file", name, bytes.size()));
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (header_len > bytes.size() - kLengthBytes)
    throw FormatError(fmt::format("{}: header length {} runs past the end of the {}-byte file",
                                  name, header_len, bytes.size()));
  if (header_len > kMaxHeaderBytes)
    throw FormatError(fmt::format("{}: header length {} exceeds the limit of {} bytes", name,
                                  header_len, kMaxHeaderBytes));
  const auto header = bytes.substr(kLengthBytes, header_len);
  if (header.empty() || header.front() != '{')
    throw FormatError(fmt::format("{}: header does not start with '{{'", name));
  const auto data = bytes.substr(kLengthBytes + header_len);

  nlohmann::json json;
  std::string duplicate;
  try {
    DuplicateKeyParser sax(json);
    nlohmann::json::sax_parse(header.begin(), header.end(), &sax);
    duplicate = sax.duplicate();
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: header is not valid JSON: {}", name, e.what()));
  }
  if (!duplicate.empty())
    throw FormatError(fmt::format("{}: header names '{}' twice", name, duplicate));
  if (!json.is_object()) throw FormatError(fmt::format("{}: header is not a JSON object", name));

  std::vector<Entry> entries;
  for (const auto& [key, value] : json.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object())
        throw FormatError(fmt::format("{}: __metadata__ is not an object", name));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          throw FormatError(fmt::format("{}: __metadata__ '{}' is not a string", name, mk));
        if (metadata) (*metadata)[mk] = mv.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, name));
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The buffer is packed: each tensor starts where the previous one ends, the last one ends at
  // the end of the file.
  std::uint64_t expected = 0;
  for (const auto& e : entries) {
    if (e.begin != expected)
      throw FormatError(
          fmt::format("{}: tensor '{}': data_offsets [{}, {}] {} the previous "
                      "tensor, which ends at {}",
                      name, e.name, e.begin, e.end,
                      e.begin < expected ? "overlap" : "leave a gap after", expected));
    expected = e.end;
  }
  if (expected != data.size())
    throw FormatError(fmt::format("{}: tensors cover {} bytes but the data section holds {}", name,
                                  expected, data.size()));

  TensorMap out;
  for (const auto& e : entries) {
    const bool is_bool = e.dtype == torch::kBool;
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(is_bool ? torch::kByte : e.dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data.data() + e.begin, e.end - e.begin);
    out.insert(e.name, is_bool ? t.ne(0) : t);
  }
  out.set_source(name);
  return out;
}

TensorMap load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  return parse_safetensors(detail::read_file(path), path, metadata);
}

std::string serialize_safetensors(const TensorMap& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::vector<torch::Tensor> contiguous;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey)
      throw InvalidArgument(fmt::format("a tensor may not be named '{}'", kMetadataKey));
    if (!tensor.defined()) throw InvalidArgument(fmt::format("tensor '{}' is undefined", name));
    const auto dtype = dtype_name(tensor.scalar_type(), name);
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    const auto bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    header[name] = {
        {"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(t));
  }
  std::string json = header.dump();
  json.append(
      (kHeaderAlignment - (kLengthBytes + json.size()) % kHeaderAlignment) % kHeaderAlignment, ' ');
  std::string out;
  out.reserve(kLengthBytes + json.size() + offset);
  for (int i = 0; i < 8; ++i) out += static_cast<char>((json.size() >> (8 * i)) & 0xFF);
  out += json;
  for (const auto& t : contiguous) {
    if (t.numel() == 0) continue;
    out.append(static_cast<const char*>(t.data_ptr()),
               static_cast<std::size_t>(t.numel()) * t.element_size());
  }
  return out;
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  detail::write_file_atomic(path, serialize_safetensors(tensors, metadata));
}

}  // namespace imcap
