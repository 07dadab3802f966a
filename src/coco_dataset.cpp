#include "imcap/coco_dataset.hpp"

#include <algorithm>
#include <iostream>
#include <map>
#include <mutex>
#include <unordered_set>

#include <fmt/format.h>
#include <torch/torch.h>

#include "detail/io.hpp"
#include "detail/json_reader.hpp"
#include "detail/tensor_check.hpp"
#include "detail/tokenizer.hpp"
#include "detail/utf8.hpp"
#include "imcap/error.hpp"

namespace imcap {

namespace {

using detail::JsonReader;

// Annotation files above this size are refused (the full COCO train file is ~90 MB).
constexpr std::uint64_t kMaxAnnotationBytes = 4ull << 30;

[[noreturn]] void fail(const std::string& file, const std::string& where, const std::string& what) {
  throw FormatError(fmt::format("{}: {}: {}", file, where, what));
}

// The JSON path of an element, e.g. annotations[17] or annotations[17].caption; built only
// when an error needs it (formatting it for each of 200k captions would cost more than parsing).
struct Where {
  const char* array;
  std::size_t index;
  std::string str(const std::string& key = {}) const {
    return key.empty() ? fmt::format("{}[{}]", array, index)
                       : fmt::format("{}[{}].{}", array, index, key);
  }
};

// Checks the kind of the next value, at the JSON path `path`.
void expect_kind(JsonReader& in, JsonReader::Kind kind, const std::string& file,
                 const std::string& path) {
  const auto got = in.peek();
  if (got != kind)
    fail(file, path,
         fmt::format("expected {}, got {}", JsonReader::kind_name(kind),
                     JsonReader::kind_name(got)));
}

// The same at `where` (plus `.key` when key is given), formatting the path only on failure.
void expect_kind(JsonReader& in, JsonReader::Kind kind, const std::string& file, const Where& where,
                 const std::string& key = {}) {
  if (in.peek() != kind) expect_kind(in, kind, file, where.str(key));
}

// s with each NUL written as \u0000, for messages.
std::string escape_nul(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '\0')
      out += "\\u0000";
    else
      out += c;
  }
  return out;
}

bool is_safe_relative(const std::string& name) {
  if (name.empty() || name.front() == '/' || name.find('\\') != std::string::npos) return false;
  return !detail::has_parent_reference(name);
}

// Reads one object of "images" or "annotations": integer keys into ints, string keys into
// strings, everything else skipped. Missing keys are reported by the caller.
struct Fields {
  std::int64_t id = 0, image_id = 0;
  bool has_id = false, has_image_id = false, has_text = false;
  std::string text;  // file_name or caption
};

void read_fields(JsonReader& in, const char* text_key, bool want_image_id, const std::string& file,
                 const Where& where, Fields& f, std::string& key) {
  expect_kind(in, JsonReader::Kind::kObject, file, where);
  in.begin_object();
  while (in.next_key(key)) {
    if (key == "id" || (want_image_id && key == "image_id")) {
      expect_kind(in, JsonReader::Kind::kInt, file, where, key);
      (key == "id" ? f.id : f.image_id) = in.read_int();
      (key == "id" ? f.has_id : f.has_image_id) = true;
    } else if (key == text_key) {
      expect_kind(in, JsonReader::Kind::kString, file, where, key);
      in.read_string(f.text);
      if (const auto problem = detail::utf8_problem(f.text); !problem.empty())
        fail(file, where.str(key), problem);
      f.has_text = true;
    } else {
      in.skip_value();
    }
  }
  if (!f.has_id) fail(file, where.str(), "missing key 'id'");
  if (want_image_id && !f.has_image_id) fail(file, where.str(), "missing key 'image_id'");
  if (!f.has_text) fail(file, where.str(), fmt::format("missing key '{}'", text_key));
}

// The file name of a COCO image, checked: a relative path inside the image folder.
void check_file_name(const std::string& file, const std::string& where, const std::string& name) {
  // A NUL would cut the path where the operating system reads it: "a\u0000b.jpg" opens "a".
  if (const auto nul = name.find('\0'); nul != std::string::npos)
    fail(file, where,
         fmt::format("'{}' contains a NUL character (\\u0000) at byte {}; expected a relative path "
                     "inside the image folder",
                     escape_nul(name), nul));
  if (!is_safe_relative(name))
    fail(file, where,
         fmt::format("'{}' must be a relative path inside the image folder (no leading '/', no "
                     "'..', no backslash)",
                     name));
}

// Reads a string value at `path` into `out`, checking that it is valid UTF-8.
void read_text(JsonReader& in, const std::string& file, const std::string& path, std::string& out) {
  expect_kind(in, JsonReader::Kind::kString, file, path);
  in.read_string(out);
  if (const auto problem = detail::utf8_problem(out); !problem.empty()) fail(file, path, problem);
}

// Whether the "images" array that `in` is at belongs to a Karpathy split file: its first image
// has "sentences" or "cocoid" (COCO's have "file_name" and "id"). `in` is a copy: looking ahead
// leaves the caller's reader where it was.
bool karpathy_layout(JsonReader in) {
  if (in.peek() != JsonReader::Kind::kArray) return false;
  in.begin_array();
  if (!in.next_element() || in.peek() != JsonReader::Kind::kObject) return false;
  in.begin_object();
  std::string key;
  while (in.next_key(key)) {
    if (key == "sentences" || key == "cocoid" || key == "filename") return true;
    if (key == "file_name") return false;
    in.skip_value();
  }
  return false;
}

// The split names of "train+restval", checked.
std::vector<std::string> split_names(const std::string& split) {
  std::vector<std::string> names;
  std::size_t begin = 0;
  while (true) {
    const auto end = split.find('+', begin);
    names.push_back(split.substr(begin, end == std::string::npos ? end : end - begin));
    if (names.back().empty())
      throw InvalidArgument(fmt::format(
          "split '{}': expected split names joined by '+', e.g. 'train+restval'", split));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return names;
}

// One sentence of a Karpathy image: "raw" (required), "tokens" and "sentid".
void read_sentence(JsonReader& in, const std::string& file, const std::string& where,
                   CocoCaption& c, bool& has_id, std::string& key) {
  expect_kind(in, JsonReader::Kind::kObject, file, where);
  in.begin_object();
  bool has_raw = false;
  while (in.next_key(key)) {
    if (key == "raw") {
      read_text(in, file, where + ".raw", c.caption);
      has_raw = true;
    } else if (key == "sentid") {
      expect_kind(in, JsonReader::Kind::kInt, file, where + ".sentid");
      c.id = in.read_int();
      has_id = true;
    } else if (key == "tokens") {
      expect_kind(in, JsonReader::Kind::kArray, file, where + ".tokens");
      in.begin_array();
      for (std::size_t k = 0; in.next_element(); ++k) {
        const auto path = fmt::format("{}.tokens[{}]", where, k);
        read_text(in, file, path, c.tokens.emplace_back());
        const auto& t = c.tokens.back();
        if (t.empty() || t.find_first_of(" \t\n\r\f\v") != std::string::npos)
          fail(file, path, fmt::format("'{}': expected one word, without spaces", t));
      }
    } else {
      in.skip_value();
    }
  }
  if (!has_raw) fail(file, where, "missing key 'raw'");
}

// The "images" array of a Karpathy split file, keeping the images of `wanted` (all when empty).
void read_karpathy_images(JsonReader& in, const std::string& file,
                          const std::vector<std::string>& wanted, std::vector<CocoImage>& images,
                          std::vector<CocoCaption>& captions,
                          std::map<std::string, std::size_t>& splits) {
  std::unordered_map<std::int64_t, std::size_t> image_at, sentence_at;
  std::string key, filepath, filename, split;
  std::size_t sentences_seen = 0;
  in.begin_array();
  for (std::size_t i = 0; in.next_element(); ++i) {
    const Where where{"images", i};
    expect_kind(in, JsonReader::Kind::kObject, file, where);
    in.begin_object();
    std::int64_t cocoid = 0, imgid = 0;
    bool has_cocoid = false, has_imgid = false, has_filename = false, has_split = false,
         has_sentences = false;
    filepath.clear();
    std::vector<CocoCaption> sentences;
    std::vector<bool> sentence_has_id;
    while (in.next_key(key)) {
      if (key == "cocoid" || key == "imgid") {
        expect_kind(in, JsonReader::Kind::kInt, file, where, key);
        (key == "cocoid" ? cocoid : imgid) = in.read_int();
        (key == "cocoid" ? has_cocoid : has_imgid) = true;
      } else if (key == "filepath") {
        read_text(in, file, where.str(key), filepath);
      } else if (key == "filename") {
        read_text(in, file, where.str(key), filename);
        has_filename = true;
      } else if (key == "split") {
        read_text(in, file, where.str(key), split);
        has_split = true;
      } else if (key == "sentences") {
        expect_kind(in, JsonReader::Kind::kArray, file, where, key);
        in.begin_array();
        for (std::size_t j = 0; in.next_element(); ++j) {
          bool has_id = false;
          read_sentence(in, file, fmt::format("{}.sentences[{}]", where.str(), j),
                        sentences.emplace_back(), has_id, key);
          sentence_has_id.push_back(has_id);
        }
        has_sentences = true;
      } else {
        in.skip_value();
      }
    }
    if (!has_cocoid && !has_imgid) fail(file, where.str(), "missing key 'cocoid' (or 'imgid')");
    if (!has_filename) fail(file, where.str(), "missing key 'filename'");
    if (!has_split) fail(file, where.str(), "missing key 'split'");
    if (!has_sentences) fail(file, where.str(), "missing key 'sentences'");
    const std::int64_t id = has_cocoid ? cocoid : imgid;
    const std::string name = filepath.empty() ? filename : filepath + "/" + filename;
    check_file_name(file, where.str(filepath.empty() ? "filename" : "filepath"), name);
    if (const auto [it, inserted] = image_at.emplace(id, i); !inserted)
      fail(file, where.str(has_cocoid ? "cocoid" : "imgid"),
           fmt::format("duplicate image id {} (also images[{}])", id, it->second));
    for (std::size_t j = 0; j < sentences.size(); ++j, ++sentences_seen) {
      auto& c = sentences[j];
      if (!sentence_has_id[j]) c.id = static_cast<std::int64_t>(sentences_seen);
      if (const auto [it, inserted] = sentence_at.emplace(c.id, i); !inserted)
        fail(file, fmt::format("{}.sentences[{}].sentid", where.str(), j),
             fmt::format("duplicate sentence id {} (also in images[{}])", c.id, it->second));
      c.image_id = id;
    }
    ++splits[split];
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), split) == wanted.end()) continue;
    images.push_back(CocoImage{id, name});
    for (auto& c : sentences) captions.push_back(std::move(c));
  }
}

}  // namespace

CocoAnnotations CocoAnnotations::load(const std::string& path, const AnnotationOptions& options) {
  const std::string text = detail::read_file(path, kMaxAnnotationBytes);
  return parse(text, path, options);
}

CocoAnnotations CocoAnnotations::parse(std::string_view text, const std::string& name,
                                       const AnnotationOptions& options) {
  CocoAnnotations out;
  out.source_ = name;
  const auto wanted =
      options.split.empty() ? std::vector<std::string>{} : split_names(options.split);
  JsonReader in(text, name);
  const auto top = in.peek();
  if (top != JsonReader::Kind::kObject)
    fail(name, "top level",
         fmt::format("expected a JSON object with 'images' and 'annotations', got {}",
                     JsonReader::kind_name(top)));
  in.begin_object();
  std::string key, field_key;
  bool has_images = false, has_annotations = false;
  // Captions may come before images in the file: their image ids are checked at the end.
  std::unordered_map<std::int64_t, std::size_t> seen_ids;
  while (in.next_key(key)) {
    if (key == "images" && karpathy_layout(in)) {
      has_images = true;
      out.karpathy_ = true;
      read_karpathy_images(in, name, wanted, out.images_, out.captions_, out.splits_);
    } else if (key == "images") {
      has_images = true;
      expect_kind(in, JsonReader::Kind::kArray, name, "images");
      in.begin_array();
      for (std::size_t i = 0; in.next_element(); ++i) {
        const Where where{"images", i};
        Fields f;
        read_fields(in, "file_name", false, name, where, f, field_key);
        check_file_name(name, where.str("file_name"), f.text);
        const auto [it, inserted] = out.image_index_.emplace(f.id, out.images_.size());
        if (!inserted)
          fail(name, where.str("id"),
               fmt::format("duplicate image id {} (also images[{}])", f.id, it->second));
        out.images_.push_back(CocoImage{f.id, std::move(f.text)});
      }
    } else if (key == "annotations" && !out.karpathy_) {
      has_annotations = true;
      expect_kind(in, JsonReader::Kind::kArray, name, "annotations");
      in.begin_array();
      for (std::size_t i = 0; in.next_element(); ++i) {
        const Where where{"annotations", i};
        Fields f;
        read_fields(in, "caption", true, name, where, f, field_key);
        const auto [it, inserted] = seen_ids.emplace(f.id, i);
        if (!inserted)
          fail(name, where.str("id"),
               fmt::format("duplicate annotation id {} (also annotations[{}])", f.id, it->second));
        out.captions_.push_back(CocoCaption{f.id, f.image_id, std::move(f.text), {}});
      }
    } else {
      in.skip_value();
    }
  }
  in.expect_end();
  if (!has_images) fail(name, "top level", "missing key 'images'");
  if (out.karpathy_) {
    for (const auto& split : wanted) {
      if (out.splits_.count(split) != 0) continue;
      std::vector<std::string> have;
      for (const auto& [s, n] : out.splits_) have.push_back(fmt::format("{} ({} images)", s, n));
      throw InvalidArgument(
          fmt::format("{}: no images in split '{}'; the file has {}", name, split,
                      have.empty() ? "none" : fmt::to_string(fmt::join(have, ", "))));
    }
    for (std::size_t i = 0; i < out.images_.size(); ++i)
      out.image_index_.emplace(out.images_[i].id, i);
  } else {
    if (!has_annotations) fail(name, "top level", "missing key 'annotations'");
    if (!wanted.empty())
      throw InvalidArgument(fmt::format(
          "{}: split '{}': this is a COCO captions file, which has no splits (a split chooses "
          "images of Karpathy's dataset_coco.json)",
          name, options.split));
  }
  out.index(name);
  return out;
}

CocoAnnotations CocoAnnotations::from(std::vector<CocoImage> images,
                                      std::vector<CocoCaption> captions, const std::string& name) {
  CocoAnnotations out;
  out.source_ = name;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const Where where{"images", i};
    check_file_name(name, where.str("file_name"), images[i].file_name);
    const auto [it, inserted] = out.image_index_.emplace(images[i].id, i);
    if (!inserted)
      fail(name, where.str("id"),
           fmt::format("duplicate image id {} (also images[{}])", images[i].id, it->second));
  }
  std::unordered_map<std::int64_t, std::size_t> seen_ids;
  for (std::size_t i = 0; i < captions.size(); ++i) {
    const auto [it, inserted] = seen_ids.emplace(captions[i].id, i);
    if (!inserted)
      fail(name, fmt::format("annotations[{}].id", i),
           fmt::format("duplicate annotation id {} (also annotations[{}])", captions[i].id,
                       it->second));
  }
  out.images_ = std::move(images);
  out.captions_ = std::move(captions);
  out.index(name);
  return out;
}

void CocoAnnotations::index(const std::string& name) {
  for (std::size_t i = 0; i < captions_.size(); ++i) {
    const auto image_id = captions_[i].image_id;
    if (image_index_.count(image_id) == 0)
      fail(name, fmt::format("annotations[{}].image_id", i),
           fmt::format("image {} is not in 'images'", image_id));
    captions_by_image_[image_id].push_back(i);
  }
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
  detail::TokenCounter counter;
  for (const auto& c : annotations.captions()) ++s.length_histogram[counter.add(c)];
  const auto counts = counter.counts();
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

struct CocoDataset::ImageCache {
  std::mutex mutex;
  std::unordered_map<std::int64_t, std::shared_ptr<const Image>> images;
  std::size_t bytes = 0;
};

CocoDataset::CocoDataset(CocoAnnotations annotations, const std::string& image_root,
                         Vocabulary vocab, ImageTransform transform, CocoDatasetOptions options)
    : annotations_(std::move(annotations)),
      image_root_(image_root),
      vocab_(std::move(vocab)),
      transform_(std::move(transform)),
      options_(std::move(options)) {
  const bool features = options_.features.defined();
  if (features) {
    const auto& f = options_.features;
    const auto& ids = options_.feature_image_ids;
    if (f.dim() != 2 && f.dim() != 3)
      throw InvalidArgument(fmt::format(
          "{}: features must be a [N, C] tensor (pooled) or [N, P, C] (grids), got shape {}",
          annotations_.source(), detail::shape_string(f)));
    if (!f.is_floating_point())
      throw InvalidArgument(
          fmt::format("{}: features must hold floating-point values, got dtype {}",
                      annotations_.source(), c10::toString(f.scalar_type())));
    if (!ids.defined() || ids.dim() != 1 || ids.scalar_type() != at::kLong ||
        ids.size(0) != f.size(0))
      throw InvalidArgument(
          fmt::format("{}: feature_image_ids must be int64 [N] with N = {} rows of features",
                      annotations_.source(), f.size(0)));
    if (f.dim() == 3) {
      // Grids stay in their (16-bit) type: the model converts each batch.
      options_.features = f.contiguous();
      if (const std::int64_t row = detail::first_non_finite_row(options_.features); row >= 0)
        throw InvalidArgument(fmt::format(
            "{}: features grid {} holds a NaN or infinite value: expected finite values",
            annotations_.source(), row));
    } else {
      options_.features = f.to(at::kFloat).contiguous();
      if (const auto bad = detail::find_non_finite(options_.features); bad.row >= 0)
        throw InvalidArgument(
            fmt::format("{}: features row {} holds {} at column {}: expected finite values",
                        annotations_.source(), bad.row, bad.value, bad.column));
    }
    const auto cpu_ids = ids.to(at::kCPU).contiguous();
    const auto* id = cpu_ids.data_ptr<std::int64_t>();
    for (std::int64_t r = 0; r < cpu_ids.size(0); ++r) feature_rows_[id[r]] = r;
  } else if (!detail::is_directory(image_root_)) {
    throw IoError(fmt::format("{}: image folder does not exist or is not a folder", image_root_));
  }
  if (options_.cache_bytes > 0 && !features) cache_ = std::make_shared<ImageCache>();
  for (const auto& [a, b] : options_.flip_swap_words) {
    if (a == b || !vocab_.contains(a) || !vocab_.contains(b)) continue;
    mirrored_[vocab_.id(a)] = vocab_.id(b);
    mirrored_[vocab_.id(b)] = vocab_.id(a);
  }
  std::vector<std::string> missing;
  std::unordered_set<std::int64_t> skipped;
  for (const auto& img : annotations_.images()) {
    if (annotations_.captions_of(img.id).empty()) continue;
    const bool found = features
                           ? feature_rows_.count(img.id) != 0
                           : detail::is_regular_file(detail::join_path(image_root_, img.file_name));
    if (!found) {
      missing.push_back(features ? fmt::format("{} (id {})", img.file_name, img.id)
                                 : img.file_name);
      skipped.insert(img.id);
    }
  }
  if (!missing.empty()) {
    const std::size_t show = std::min<std::size_t>(missing.size(), 10);
    std::string list;
    for (std::size_t i = 0; i < show; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > show) list += fmt::format(", ... ({} more)", missing.size() - show);
    const std::string where = features ? "the features" : image_root_;
    const char* what = features ? "image(s) without features" : "missing image file(s)";
    if (!options_.skip_missing_images) {
      if (features)
        throw InvalidArgument(fmt::format("{}: {} image(s) listed in {} have no features: {}",
                                          where, missing.size(), annotations_.source(), list));
      throw IoError(fmt::format("{}: {} image file(s) listed in {} are missing: {}", image_root_,
                                missing.size(), annotations_.source(), list));
    }
    std::cerr << fmt::format("imcap: warning: {}: skipping {} {}: {}\n", where, missing.size(),
                             what, list);
  }
  for (const auto& img : annotations_.images()) {
    if (skipped.count(img.id) != 0) continue;
    bool any = false;
    for (const std::size_t ci : annotations_.captions_of(img.id)) {
      const auto& caption = annotations_.captions()[ci];
      auto ids = caption.tokens.empty() ? vocab_.encode(caption.caption)
                                        : vocab_.encode_tokens(caption.tokens);
      if (options_.max_caption_tokens > 0 && ids.size() - 2 > options_.max_caption_tokens) continue;
      if (options_.clip_caption_tokens > 0 && ids.size() - 2 > options_.clip_caption_tokens) {
        ids.resize(options_.clip_caption_tokens + 1);
        ids.push_back(vocab_.end_id());
      }
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
  bool flipped = false;
  item.image = image(item.image_id, rng, &flipped);
  if (flipped)
    for (auto& id : item.ids) id = mirrored_token(id);
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
  return detail::join_path(image_root_, annotations_.image(image_id).file_name);
}

Image CocoDataset::raw_image(std::int64_t image_id) const {
  return decode_image(image_path(image_id), options_.decode);
}

at::Tensor CocoDataset::image(std::int64_t image_id, std::mt19937_64& rng, bool* flipped) const {
  if (flipped != nullptr) *flipped = false;
  if (has_features()) {
    const auto it = feature_rows_.find(image_id);
    if (it == feature_rows_.end())
      throw InvalidArgument(fmt::format("dataset: image id {} has no features", image_id));
    return options_.features[it->second];
  }
  // JPEGs are downscaled while decoding as far as the transform allows.
  auto decode = [&] {
    return decode_image(image_path(image_id), transform_.fast_decode_options(options_.decode));
  };
  if (!cache_) return transform_(decode(), rng, flipped);
  std::shared_ptr<const Image> cached;
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    const auto it = cache_->images.find(image_id);
    if (it != cache_->images.end()) cached = it->second;
  }
  if (!cached) {
    // Resized to the transform's size, the transform's own resize is the identity: the crop
    // and flip it then takes are those it takes of the decoded image (same pixels, same draws).
    cached = std::make_shared<const Image>(resize_shorter(decode(), transform_.options().resize));
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->bytes + cached->pixels.size() <= options_.cache_bytes &&
        cache_->images.emplace(image_id, cached).second)
      cache_->bytes += cached->pixels.size();
  }
  return transform_(*cached, rng, flipped);
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
