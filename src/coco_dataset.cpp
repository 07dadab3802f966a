#include "imcap/coco_dataset.hpp"

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <unordered_set>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "detail/io.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

using json = nlohmann::json;

// Annotation files above this size are refused (the full COCO train file is ~90 MB).
constexpr std::uint64_t kMaxAnnotationBytes = 4ull << 30;

const char* type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a floating-point number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    default:
      return "an unsupported value";
  }
}

[[noreturn]] void fail(const std::string& file, const std::string& where, const std::string& what) {
  throw FormatError(fmt::format("{}: {}: {}", file, where, what));
}

const json& member(const json& obj, const char* key, const std::string& file,
                   const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end()) fail(file, where, fmt::format("missing key '{}'", key));
  return *it;
}

std::int64_t get_id(const json& obj, const char* key, const std::string& file,
                    const std::string& where) {
  const json& v = member(obj, key, file, where);
  if (!v.is_number_integer())
    fail(file, fmt::format("{}.{}", where, key),
         fmt::format("expected an integer, got {}", type_name(v)));
  return v.get<std::int64_t>();
}

const std::string& get_string(const json& obj, const char* key, const std::string& file,
                              const std::string& where) {
  const json& v = member(obj, key, file, where);
  if (!v.is_string())
    fail(file, fmt::format("{}.{}", where, key),
         fmt::format("expected a string, got {}", type_name(v)));
  return v.get_ref<const std::string&>();
}

bool is_safe_relative(const std::string& name) {
  if (name.empty() || name.front() == '/' || name.find('\\') != std::string::npos) return false;
  for (const auto& part : std::filesystem::path(name))
    if (part == "..") return false;
  return true;
}

}  // namespace

CocoAnnotations CocoAnnotations::load(const std::string& path) {
  const std::string text = detail::read_file(path, kMaxAnnotationBytes);
  return parse(text, path);
}

CocoAnnotations CocoAnnotations::parse(std::string_view text, const std::string& name) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", name, e.what()));
  }
  if (!root.is_object())
    fail(name, "top level",
         fmt::format("expected a JSON object with 'images' and 'annotations', got {}",
                     type_name(root)));
  CocoAnnotations out;
  out.source_ = name;
  const json& images = member(root, "images", name, "top level");
  if (!images.is_array())
    fail(name, "images", fmt::format("expected an array, got {}", type_name(images)));
  out.images_.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string where = fmt::format("images[{}]", i);
    const json& img = images[i];
    if (!img.is_object())
      fail(name, where, fmt::format("expected an object, got {}", type_name(img)));
    CocoImage ci;
    ci.id = get_id(img, "id", name, where);
    ci.file_name = get_string(img, "file_name", name, where);
    if (!is_safe_relative(ci.file_name))
      fail(name, where + ".file_name",
           fmt::format("'{}' must be a relative path inside the image folder (no leading '/', "
                       "no '..', no backslash)",
                       ci.file_name));
    const auto [it, inserted] = out.image_index_.emplace(ci.id, out.images_.size());
    if (!inserted)
      fail(name, where + ".id",
           fmt::format("duplicate image id {} (also images[{}])", ci.id, it->second));
    out.images_.push_back(std::move(ci));
  }
  const json& anns = member(root, "annotations", name, "top level");
  if (!anns.is_array())
    fail(name, "annotations", fmt::format("expected an array, got {}", type_name(anns)));
  out.captions_.reserve(anns.size());
  std::unordered_map<std::int64_t, std::size_t> seen_ids;
  seen_ids.reserve(anns.size());
  for (std::size_t i = 0; i < anns.size(); ++i) {
    const std::string where = fmt::format("annotations[{}]", i);
    const json& a = anns[i];
    if (!a.is_object()) fail(name, where, fmt::format("expected an object, got {}", type_name(a)));
    CocoCaption c;
    c.id = get_id(a, "id", name, where);
    c.image_id = get_id(a, "image_id", name, where);
    c.caption = get_string(a, "caption", name, where);
    const auto [it, inserted] = seen_ids.emplace(c.id, i);
    if (!inserted)
      fail(name, where + ".id",
           fmt::format("duplicate annotation id {} (also annotations[{}])", c.id, it->second));
    if (out.image_index_.count(c.image_id) == 0)
      fail(name, where + ".image_id", fmt::format("image {} is not in 'images'", c.image_id));
    out.captions_by_image_[c.image_id].push_back(out.captions_.size());
    out.captions_.push_back(std::move(c));
  }
  return out;
}

const CocoImage& CocoAnnotations::image(std::int64_t image_id) const {
  const auto it = image_index_.find(image_id);
  if (it == image_index_.end())
    throw InvalidArgument(fmt::format("{}: no image with id {}", source_, image_id));
  return images_[it->second];
}

const std::vector<std::size_t>& CocoAnnotations::captions_of(std::int64_t image_id) const {
  static const std::vector<std::size_t> kNone;
  const auto it = captions_by_image_.find(image_id);
  return it == captions_by_image_.end() ? kNone : it->second;
}

CaptionStatistics caption_statistics(const CocoAnnotations& annotations, std::size_t top) {
  CaptionStatistics s;
  s.images = annotations.images().size();
  s.captions = annotations.captions().size();
  for (const auto& img : annotations.images())
    if (annotations.captions_of(img.id).empty()) ++s.images_without_captions;
  std::unordered_map<std::string, std::int64_t> counts;
  for (const auto& c : annotations.captions()) {
    auto tokens = tokenize(c.caption);
    ++s.length_histogram[tokens.size()];
    for (auto& t : tokens) ++counts[std::move(t)];
  }
  std::vector<std::pair<std::string, std::int64_t>> words(counts.begin(), counts.end());
  const std::size_t keep = std::min(top, words.size());
  std::partial_sort(words.begin(), words.begin() + static_cast<std::ptrdiff_t>(keep), words.end(),
                    [](const auto& a, const auto& b) {
                      return a.second != b.second ? a.second > b.second : a.first < b.first;
                    });
  words.resize(keep);
  s.top_words = std::move(words);
  return s;
}

}  // namespace imcap

namespace imcap {

CocoDataset::CocoDataset(const std::string& annotation_file, const std::string& image_root,
                         Vocabulary vocab, ImageTransform transform, CocoDatasetOptions options)
    : CocoDataset(CocoAnnotations::load(annotation_file), image_root, std::move(vocab),
                  std::move(transform), std::move(options)) {}

CocoDataset::CocoDataset(CocoAnnotations annotations, const std::string& image_root,
                         Vocabulary vocab, ImageTransform transform, CocoDatasetOptions options)
    : annotations_(std::move(annotations)),
      image_root_(image_root),
      vocab_(std::move(vocab)),
      transform_(std::move(transform)),
      options_(std::move(options)) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(image_root_, ec))
    throw IoError(fmt::format("{}: image folder does not exist or is not a folder", image_root_));
  std::vector<std::string> missing;
  std::unordered_set<std::int64_t> skipped;
  for (const auto& img : annotations_.images()) {
    if (annotations_.captions_of(img.id).empty()) continue;
    if (!fs::is_regular_file(fs::path(image_root_) / img.file_name, ec)) {
      missing.push_back(img.file_name);
      skipped.insert(img.id);
    }
  }
  if (!missing.empty()) {
    const std::size_t show = std::min<std::size_t>(missing.size(), 10);
    std::string list;
    for (std::size_t i = 0; i < show; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > show) list += fmt::format(", ... ({} more)", missing.size() - show);
    if (!options_.skip_missing_images)
      throw IoError(fmt::format("{}: {} image file(s) listed in {} are missing: {}", image_root_,
                                missing.size(), annotations_.source(), list));
    std::cerr << fmt::format("imcap: warning: {}: skipping {} missing image file(s): {}\n",
                             image_root_, missing.size(), list);
  }
  for (const auto& img : annotations_.images()) {
    if (skipped.count(img.id) != 0) continue;
    bool any = false;
    for (const std::size_t ci : annotations_.captions_of(img.id)) {
      auto ids = vocab_.encode(annotations_.captions()[ci].caption);
      if (options_.max_caption_tokens > 0 && ids.size() - 2 > options_.max_caption_tokens) continue;
      by_image_[img.id].push_back(caption_ids_.size());
      caption_index_.push_back(ci);
      caption_ids_.push_back(std::move(ids));
      any = true;
    }
    if (any) image_ids_.push_back(img.id);
  }
}

CaptionItem CocoDataset::get(std::size_t index, std::mt19937_64& rng) const {
  CaptionItem item;
  item.ids = caption_ids(index);
  item.image_id = image_id_of(index);
  item.caption_index = index;
  item.image = image(item.image_id, rng);
  return item;
}

const std::vector<std::int64_t>& CocoDataset::caption_ids(std::size_t index) const {
  if (index >= caption_ids_.size())
    throw InvalidArgument(fmt::format("dataset: caption index {} is out of range [0, {})", index,
                                      caption_ids_.size()));
  return caption_ids_[index];
}

std::int64_t CocoDataset::image_id_of(std::size_t index) const {
  if (index >= caption_index_.size())
    throw InvalidArgument(fmt::format("dataset: caption index {} is out of range [0, {})", index,
                                      caption_index_.size()));
  return annotations_.captions()[caption_index_[index]].image_id;
}

std::string CocoDataset::image_path(std::int64_t image_id) const {
  return (std::filesystem::path(image_root_) / annotations_.image(image_id).file_name).string();
}

Image CocoDataset::raw_image(std::int64_t image_id) const {
  return decode_image(image_path(image_id), options_.decode);
}

at::Tensor CocoDataset::image(std::int64_t image_id, std::mt19937_64& rng) const {
  return transform_(raw_image(image_id), rng);
}

const std::vector<std::size_t>& CocoDataset::captions_of_image(std::int64_t image_id) const {
  static const std::vector<std::size_t> kNone;
  const auto it = by_image_.find(image_id);
  return it == by_image_.end() ? kNone : it->second;
}

std::vector<std::string> CocoDataset::references(std::int64_t image_id) const {
  std::vector<std::string> refs;
  for (const std::size_t ci : annotations_.captions_of(image_id))
    refs.push_back(annotations_.captions()[ci].caption);
  return refs;
}

}  // namespace imcap
