// torch.save readers (zip and legacy formats), format detection and load_state_dict
// (imcap/weights.hpp).
#include "imcap/weights.hpp"

#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <regex>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "detail/enum_names.hpp"
#include "detail/io.hpp"
#include "detail/pickle.hpp"
#include "detail/torch_modules.hpp"
#include "detail/zip.hpp"
#include "imcap/error.hpp"
#include "imcap/weights.hpp"

namespace imcap {

namespace {

using detail::PickleStorageRef;
using detail::PickleTensorRef;
using detail::PickleValue;
using detail::PickleValuePtr;
using detail::unpickle;
using detail::UnpickleOptions;
using Kind = PickleValue::Kind;

// 0x1950a86a20f9469cfc6c, the legacy format's magic number, as pickle's LONG1 bytes.
constexpr std::string_view kLegacyMagic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
constexpr std::int64_t kLegacyProtocolVersion = 1001;
constexpr std::size_t kMaxListedKeys = 20;

struct StorageType {
  std::string_view name;
  torch::ScalarType dtype;
};

constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", torch::kFloat},
    {"DoubleStorage", torch::kDouble},
    {"HalfStorage", torch::kHalf},
    {"BFloat16Storage", torch::kBFloat16},
    {"LongStorage", torch::kLong},
    {"IntStorage", torch::kInt},
    {"ShortStorage", torch::kShort},
    {"CharStorage", torch::kChar},
    {"ByteStorage", torch::kByte},
    {"BoolStorage", torch::kBool},
    {"ComplexFloatStorage", torch::kComplexFloat},
    {"ComplexDoubleStorage", torch::kComplexDouble},
    {"UntypedStorage", torch::kByte},
};

torch::ScalarType storage_dtype(const std::string& type_name, const std::string& file) {
  for (const auto& t : kStorageTypes) {
    if (t.name == type_name) return t.dtype;
  }
  throw FormatError(fmt::format("{}: unsupported storage type '{}'", file, type_name));
}

std::string shape_string(torch::IntArrayRef sizes) {
  return fmt::format("[{}]", fmt::join(sizes.begin(), sizes.end(), ", "));
}

// Copies the bytes of one storage into an owned tensor of numel elements.
torch::Tensor make_storage(std::string_view bytes, std::int64_t numel, torch::ScalarType dtype,
                           const std::string& file, const std::string& key) {
  const auto itemsize = static_cast<std::uint64_t>(c10::elementSize(dtype));
  if (numel < 0 || static_cast<std::uint64_t>(numel) > bytes.size() / itemsize ||
      static_cast<std::uint64_t>(numel) * itemsize != bytes.size())
    throw FormatError(
        fmt::format("{}: storage '{}': {} elements of {} bytes do not match its {} "
                    "bytes of data",
                    file, key, numel, itemsize, bytes.size()));
  // Bool bytes other than 0 and 1 would be undefined behaviour in a bool tensor: normalize.
  const auto raw_dtype = dtype == torch::kBool ? torch::kByte : dtype;
  auto t = torch::empty({numel}, torch::TensorOptions().dtype(raw_dtype));
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return dtype == torch::kBool ? t.ne(0) : t;
}

// A tensor view into its storage, after checking that every element lies inside it.
torch::Tensor make_view(const torch::Tensor& storage, const PickleTensorRef& ref,
                        const std::string& file, const std::string& what) {
  const auto fail = [&](const std::string& why) {
    throw FormatError(fmt::format("{}: tensor '{}': {}", file, what, why));
  };
  const std::int64_t storage_numel = storage.numel();
  if (ref.storage_offset < 0 || ref.storage_offset > storage_numel)
    fail(fmt::format("storage offset {} outside its storage of {} elements", ref.storage_offset,
                     storage_numel));
  bool empty = false;
  std::int64_t last = ref.storage_offset;  // index of the last element
  for (std::size_t d = 0; d < ref.sizes.size(); ++d) {
    if (ref.sizes[d] < 0 || ref.strides[d] < 0)
      fail(fmt::format("negative size or stride in {} / {}", shape_string(ref.sizes),
                       shape_string(ref.strides)));
    if (ref.sizes[d] == 0) empty = true;
  }
  if (!empty) {
    for (std::size_t d = 0; d < ref.sizes.size(); ++d) {
      std::int64_t span = 0;
      if (__builtin_mul_overflow(ref.sizes[d] - 1, ref.strides[d], &span) ||
          __builtin_add_overflow(last, span, &last))
        fail("size and stride overflow");
    }
    if (last >= storage_numel)
      fail(fmt::format("sizes {} strides {} offset {} reach element {} of a storage of {}",
                       shape_string(ref.sizes), shape_string(ref.strides), ref.storage_offset, last,
                       storage_numel));
  }
  return storage.as_strided(ref.sizes, ref.strides, ref.storage_offset);
}

// Storages of one file, by key, and the tensors that view them.
class TorchFileTensors {
 public:
  explicit TorchFileTensors(std::string file, bool modules = false)
      : file_(std::move(file)), modules_(modules) {}

  // persistent_load for the unpickler: ('storage', torch.XStorage, key, location, numel[, view]).
  PickleValuePtr persistent_load(const PickleValuePtr& pid, bool legacy) {
    const auto fail = [&](const std::string& why) {
      throw FormatError(fmt::format("{}: persistent id: {}", file_, why));
    };
    // Legacy files of whole modules name each module class: ('module', class, file, source).
    // The class stays a recorded name; its source is ignored.
    if (legacy && modules_ && pid->kind == Kind::kTuple && pid->items.size() == 4 &&
        pid->items[0]->kind == Kind::kString && pid->items[0]->text == "module") {
      if (pid->items[1]->kind != Kind::kGlobal) fail("a module persistent id without a class");
      return pid->items[1];
    }
    const std::size_t n = legacy ? 6 : 5;
    if (pid->kind != Kind::kTuple || pid->items.size() != n)
      fail(fmt::format("expected a tuple of {} items, got a {}", n, pid->type_name()));
    const auto& a = pid->items;
    if (a[0]->kind != Kind::kString || a[0]->text != "storage")
      fail("only 'storage' persistent ids are supported");
    if (a[1]->kind != Kind::kGlobal || a[1]->text.rfind("torch.", 0) != 0)
      fail("the storage type is not a torch storage class");
    if ((a[2]->kind != Kind::kString && a[2]->kind != Kind::kInt) || a[3]->kind != Kind::kString ||
        a[4]->kind != Kind::kInt)
      fail("malformed storage reference");
    if (legacy && a[5]->kind != Kind::kNone) fail("legacy storage views are not supported");
    auto ref = std::make_shared<PickleValue>();
    ref->kind = Kind::kStorage;
    ref->storage.type_name = a[1]->text.substr(std::strlen("torch."));
    ref->storage.key = a[2]->kind == Kind::kString ? a[2]->text : std::to_string(a[2]->integer);
    ref->storage.location = a[3]->text;
    ref->storage.numel = a[4]->integer;
    storage_dtype(ref->storage.type_name, file_);
    const auto [it, inserted] = refs_.emplace(ref->storage.key, ref);
    if (!inserted && it->second->storage.type_name != ref->storage.type_name)
      fail(fmt::format("storage '{}' is referenced with two types", ref->storage.key));
    if (inserted) order_.push_back(ref->storage.key);
    return it->second;
  }

  const std::vector<std::string>& keys() const { return order_; }
  const PickleStorageRef& ref(const std::string& key) const {
    const auto it = refs_.find(key);
    if (it == refs_.end())
      throw FormatError(
          fmt::format("{}: storage '{}' is not referenced by the pickle", file_, key));
    return it->second->storage;
  }
  void set_data(const std::string& key, std::string_view bytes, std::int64_t numel) {
    const auto& r = ref(key);
    storages_[key] = make_storage(bytes, numel, storage_dtype(r.type_name, file_), file_, key);
  }

  torch::Tensor tensor(const PickleValue& value, const std::string& name) const {
    const auto& key = value.tensor.storage->storage.key;
    const auto it = storages_.find(key);
    if (it == storages_.end())
      throw FormatError(fmt::format("{}: tensor '{}': storage '{}' has no data", file_, name, key));
    return make_view(it->second, value.tensor, file_, name);
  }

 private:
  std::string file_;
  bool modules_ = false;
  std::unordered_map<std::string, PickleValuePtr> refs_;
  std::vector<std::string> order_;
  std::unordered_map<std::string, torch::Tensor> storages_;
};

bool is_tensor_dict(const PickleValue& v) {
  if (v.kind != Kind::kDict) return false;
  for (const auto& [k, x] : v.entries) {
    if (k->kind != Kind::kString || x->kind != Kind::kTensor) return false;
  }
  return true;
}

std::string describe_keys(const PickleValue& v) {
  std::vector<std::string> keys;
  for (const auto& [k, x] : v.entries) {
    if (keys.size() == kMaxListedKeys) {
      keys.push_back("...");
      break;
    }
    keys.push_back(k->kind == Kind::kString ? k->text : "<" + k->type_name() + ">");
  }
  return fmt::format("[{}]", fmt::join(keys, ", "));
}

const PickleValue& find_state_dict(const PickleValue& root, const TorchLoadOptions& options,
                                   const std::string& file) {
  if (!options.state_dict_key.empty()) {
    const PickleValue* v = root.kind == Kind::kDict ? root.get(options.state_dict_key) : nullptr;
    if (!v)
      throw FormatError(fmt::format(
          "{}: no key '{}' at the top level (a {}{})", file, options.state_dict_key,
          root.type_name(), root.kind == Kind::kDict ? " with keys " + describe_keys(root) : ""));
    if (!is_tensor_dict(*v))
      throw FormatError(
          fmt::format("{}: '{}' is not a dict of tensors", file, options.state_dict_key));
    return *v;
  }
  if (is_tensor_dict(root)) return root;
  if (root.kind == Kind::kDict) {
    for (const char* key : {"state_dict", "model_state_dict", "model", "net", "module"}) {
      const PickleValue* v = root.get(key);
      if (v && is_tensor_dict(*v)) return *v;
    }
    throw FormatError(
        fmt::format("{}: no state dict found: the top level is a dict with keys {} "
                    "(name the one holding the tensors with a state-dict key)",
                    file, describe_keys(root)));
  }
  throw FormatError(fmt::format("{}: expected a state dict, found a {}", file, root.type_name()));
}

TensorMap collect(const PickleValue& root, const TorchFileTensors& storages,
                  const TorchLoadOptions& options, const std::string& file) {
  const PickleValue& dict = find_state_dict(root, options, file);
  TensorMap out;
  for (const auto& [k, v] : dict.entries) out.insert(k->text, storages.tensor(*v, k->text));
  out.set_source(file);
  return out;
}

// What a reader hands its unpickled root and storages to: it picks the tensors.
using Collector = std::function<TensorMap(const PickleValue&, const TorchFileTensors&)>;

// The unpickler's options for a file: state dicts only, or whole modules too.
UnpickleOptions torch_unpickle_options(bool modules) {
  UnpickleOptions o;
  o.allow_objects = modules;
  o.allow_torch_modules = modules;
  return o;
}

TensorMap read_torch_zip(std::string_view data, bool modules, const Collector& collect_tensors,
                         const std::string& file) {
  const detail::ZipArchive zip(data, file);
  std::string prefix;
  for (const auto& n : zip.names()) {
    const auto slash = n.find('/');
    if (slash != std::string::npos && n.substr(slash) == "/data.pkl") {
      prefix = n.substr(0, slash + 1);
      break;
    }
  }
  if (prefix.empty())
    throw FormatError(
        fmt::format("{}: zip archive without <name>/data.pkl: not a torch.save file", file));
  if (zip.contains(prefix + "byteorder") && zip.at(prefix + "byteorder") != "little")
    throw FormatError(fmt::format("{}: big-endian torch files are not supported", file));
  TorchFileTensors storages(file, modules);
  UnpickleOptions unpickle_options = torch_unpickle_options(modules);
  unpickle_options.persistent_load = [&](const PickleValuePtr& pid) {
    return storages.persistent_load(pid, /*legacy=*/false);
  };
  const auto root = unpickle(zip.at(prefix + "data.pkl"), unpickle_options, file + ":data.pkl");
  for (const auto& key : storages.keys()) {
    storages.set_data(key, zip.at(prefix + "data/" + key), storages.ref(key).numel);
  }
  return collect_tensors(*root, storages);
}

TensorMap read_torch_legacy(std::string_view data, bool modules, const Collector& collect_tensors,
                            const std::string& file) {
  std::size_t pos = 0;
  const auto next = [&](const UnpickleOptions& o, const char* what) {
    std::size_t used = 0;
    auto v = unpickle(data.substr(pos), o, fmt::format("{}: {}", file, what), &used);
    pos += used;
    return v;
  };
  const UnpickleOptions plain;
  const auto magic = next(plain, "magic number");
  if (magic->kind != Kind::kBigInt || magic->text != kLegacyMagic)
    throw FormatError(fmt::format("{}: not a legacy torch.save file (wrong magic number)", file));
  const auto version = next(plain, "protocol version");
  if (version->kind != Kind::kInt || version->integer != kLegacyProtocolVersion)
    throw FormatError(fmt::format("{}: unsupported legacy protocol version (expected {})", file,
                                  kLegacyProtocolVersion));
  const auto sys_info = next(plain, "sys_info");
  const PickleValue* little =
      sys_info->kind == Kind::kDict ? sys_info->get("little_endian") : nullptr;
  if (little && little->kind == Kind::kBool && !little->boolean)
    throw FormatError(fmt::format("{}: big-endian torch files are not supported", file));

  TorchFileTensors storages(file, modules);
  UnpickleOptions main_options = torch_unpickle_options(modules);
  main_options.persistent_load = [&](const PickleValuePtr& pid) {
    return storages.persistent_load(pid, /*legacy=*/true);
  };
  const auto root = next(main_options, "main pickle");
  const auto keys = next(plain, "storage keys");
  if (keys->kind != Kind::kList)
    throw FormatError(fmt::format("{}: storage key list is a {}", file, keys->type_name()));
  for (const auto& k : keys->items) {
    if (k->kind != Kind::kString)
      throw FormatError(fmt::format("{}: storage key is a {}", file, k->type_name()));
    const auto& ref = storages.ref(k->text);
    if (data.size() - pos < 8)
      throw FormatError(fmt::format("{}: storage '{}': truncated before its size", file, k->text));
    std::uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | static_cast<unsigned char>(data[pos + i]);
    pos += 8;
    const auto itemsize =
        static_cast<std::uint64_t>(c10::elementSize(storage_dtype(ref.type_name, file)));
    if (count > (data.size() - pos) / itemsize)
      throw FormatError(fmt::format("{}: storage '{}': {} elements run past the end of the file",
                                    file, k->text, count));
    storages.set_data(k->text, data.substr(pos, count * itemsize),
                      static_cast<std::int64_t>(count));
    pos += count * itemsize;
  }
  return collect_tensors(*root, storages);
}

// A pickled nn.Module's parameters and buffers (not the non-persistent ones), under their
// state-dict names, then its submodules'.
void flatten_module(const PickleValue& module, const std::string& prefix,
                    const TorchFileTensors& storages, TensorMap& out, const std::string& file,
                    int depth) {
  const std::string where = prefix.empty() ? std::string("the module") : "'" + prefix + "'";
  if (module.kind != Kind::kObject || module.get("_modules") == nullptr)
    throw FormatError(fmt::format("{}: {} is a {}, not a pickled torch.nn.Module", file, where,
                                  module.type_name()));
  if (depth > 64) throw FormatError(fmt::format("{}: modules nested too deeply", file));
  std::unordered_set<std::string> non_persistent;
  if (const PickleValue* np = module.get("_non_persistent_buffers_set"))
    for (const auto& item : np->items)
      if (item->kind == Kind::kString) non_persistent.insert(item->text);
  for (const char* part : {"_parameters", "_buffers"}) {
    const PickleValue* dict = module.get(part);
    if (dict == nullptr) continue;
    if (dict->kind != Kind::kDict)
      throw FormatError(fmt::format("{}: {}'s {} is a {}", file, where, part, dict->type_name()));
    for (const auto& [k, v] : dict->entries) {
      if (k->kind != Kind::kString)
        throw FormatError(
            fmt::format("{}: {}'s {} has a {} key", file, where, part, k->type_name()));
      if (v->kind == Kind::kNone || non_persistent.count(k->text) > 0) continue;
      if (v->kind != Kind::kTensor)
        throw FormatError(fmt::format("{}: '{}{}' is a {}, expected a tensor", file, prefix,
                                      k->text, v->type_name()));
      out.insert(prefix + k->text, storages.tensor(*v, prefix + k->text));
    }
  }
  const PickleValue& children = *module.get("_modules");
  if (children.kind != Kind::kDict)
    throw FormatError(fmt::format("{}: {}'s _modules is a {}", file, where, children.type_name()));
  for (const auto& [k, v] : children.entries) {
    if (k->kind != Kind::kString)
      throw FormatError(
          fmt::format("{}: {} has a submodule with a {} name", file, where, k->type_name()));
    if (v->kind == Kind::kNone) continue;
    flatten_module(*v, prefix + k->text + ".", storages, out, file, depth + 1);
  }
}

std::string join_limited(const std::vector<std::string>& names) {
  std::vector<std::string> shown(
      names.begin(),
      names.begin() + static_cast<std::ptrdiff_t>(std::min(names.size(), kMaxListedKeys)));
  if (names.size() > kMaxListedKeys)
    shown.push_back(fmt::format("... {} more", names.size() - kMaxListedKeys));
  return fmt::format("{}", fmt::join(shown, ", "));
}

std::regex compile_regex(const std::string& pattern, const char* what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw InvalidArgument(
        fmt::format("{} pattern '{}' is not a valid regex: {}", what, pattern, e.what()));
  }
}

}  // namespace

void TensorMap::insert(std::string name, torch::Tensor tensor) {
  if (!index_.emplace(name, entries_.size()).second)
    throw InvalidArgument(fmt::format("tensor '{}' is already present", name));
  entries_.emplace_back(std::move(name), std::move(tensor));
}

const torch::Tensor& TensorMap::at(const std::string& name) const {
  const auto* t = find(name);
  if (!t) throw InvalidArgument(fmt::format("no tensor named '{}'", name));
  return *t;
}

const torch::Tensor* TensorMap::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

std::int64_t TensorMap::total_numel() const {
  std::int64_t n = 0;
  for (const auto& [name, t] : entries_) n += t.numel();
  return n;
}

std::string to_string(WeightsFormat format) { return detail::enum_name(format); }

namespace {

WeightsFormat detect_format(std::string_view head, const std::string& path) {
  if (detail::looks_like_zip(head)) return WeightsFormat::kTorchZip;
  // A legacy file starts with the pickled magic number: PROTO n, LONG1 10 <bytes>.
  if (head.size() >= 14 && static_cast<unsigned char>(head[0]) == 0x80 &&
      static_cast<unsigned char>(head[2]) == 0x8a && head[3] == 10 &&
      head.substr(4, 10) == kLegacyMagic)
    return WeightsFormat::kTorchLegacy;
  if (head.size() >= 9 && head[8] == '{') return WeightsFormat::kSafetensors;
  throw FormatError(fmt::format("{}: not a torch.save (zip or legacy) or safetensors file", path));
}

// Reads a torch.save file of either format.
TensorMap read_torch(const std::string& path, std::uint64_t max_bytes, bool modules,
                     const Collector& collect_tensors) {
  const std::string data = detail::read_file(path, max_bytes);
  const auto format = detect_format(std::string_view(data).substr(0, 16), path);
  if (format == WeightsFormat::kTorchZip)
    return read_torch_zip(data, modules, collect_tensors, path);
  if (format == WeightsFormat::kTorchLegacy)
    return read_torch_legacy(data, modules, collect_tensors, path);
  throw FormatError(fmt::format("{}: a safetensors file, not a torch.save file", path));
}

}  // namespace

WeightsFormat detect_weights_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(fmt::format("{}: cannot open: {}", path, detail::errno_message(errno)));
  std::string head(16, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<std::size_t>(in.gcount()));
  return detect_format(head, path);
}

TensorMap load_torch_file(const std::string& path, const TorchLoadOptions& options) {
  return read_torch(path, options.max_file_bytes, /*modules=*/false,
                    [&](const PickleValue& root, const TorchFileTensors& storages) {
                      return collect(root, storages, options, path);
                    });
}

namespace detail {

TensorMap load_pickled_module(const std::string& path, const std::string& key,
                              std::uint64_t max_file_bytes) {
  return read_torch(
      path, max_file_bytes, /*modules=*/true,
      [&](const PickleValue& root, const TorchFileTensors& storages) {
        const PickleValue* module = root.kind == Kind::kDict ? root.get(key) : nullptr;
        if (module == nullptr)
          throw FormatError(
              fmt::format("{}: no key '{}' at the top level (a {}{})", path, key, root.type_name(),
                          root.kind == Kind::kDict ? " with keys " + describe_keys(root) : ""));
        TensorMap out;
        if (is_tensor_dict(*module)) {  // a state dict saved under the key
          for (const auto& [k, v] : module->entries)
            out.insert(k->text, storages.tensor(*v, k->text));
        } else {
          flatten_module(*module, "", storages, out, path + ": '" + key + "'", 0);
        }
        out.set_source(path);
        return out;
      });
}

}  // namespace detail

TensorMap load_weights(const std::string& path, const TorchLoadOptions& options) {
  if (detect_weights_format(path) == WeightsFormat::kSafetensors) return load_safetensors(path);
  return load_torch_file(path, options);
}

std::string remap_key(const std::string& key, const LoadOptions& options) {
  std::string k = key;
  if (!options.strip_prefix.empty() && k.rfind(options.strip_prefix, 0) == 0)
    k.erase(0, options.strip_prefix.size());
  for (const auto& [pattern, replacement] : options.rename)
    k = std::regex_replace(k, compile_regex(pattern, "rename"), replacement);
  return options.add_prefix + k;
}

LoadReport load_state_dict(torch::nn::Module& module, const TensorMap& tensors,
                           const LoadOptions& options) {
  std::vector<std::regex> ignore;
  for (const auto& p : options.ignore) ignore.push_back(compile_regex(p, "ignore"));
  std::vector<std::pair<std::regex, std::string>> rename;
  for (const auto& [p, r] : options.rename) rename.emplace_back(compile_regex(p, "rename"), r);
  const auto ignored = [&](const std::string& name) {
    return std::any_of(ignore.begin(), ignore.end(),
                       [&](const std::regex& re) { return std::regex_match(name, re); });
  };

  const std::string where = tensors.source().empty()
                                ? std::string("load_state_dict")
                                : fmt::format("{}: load_state_dict", tensors.source());
  LoadReport report;
  std::unordered_map<std::string, std::pair<std::string, const torch::Tensor*>> source;
  std::vector<std::string> source_order;
  for (const auto& [key, tensor] : tensors) {
    std::string k = key;
    if (!options.strip_prefix.empty() && k.rfind(options.strip_prefix, 0) == 0)
      k.erase(0, options.strip_prefix.size());
    for (const auto& [re, replacement] : rename) k = std::regex_replace(k, re, replacement);
    k = options.add_prefix + k;
    if (ignored(k)) {
      report.ignored.push_back(k);
      continue;
    }
    const auto [it, inserted] = source.emplace(k, std::make_pair(key, &tensor));
    if (!inserted)
      throw InvalidArgument(fmt::format("{}: file keys '{}' and '{}' both map to '{}'", where,
                                        it->second.first, key, k));
    source_order.push_back(k);
  }

  std::vector<std::pair<torch::Tensor, const torch::Tensor*>> copies;
  std::unordered_set<std::string> used;
  const auto visit = [&](const std::string& name, const torch::Tensor& target) {
    if (!target.defined() || ignored(name)) return;
    const auto it = source.find(name);
    if (it == source.end()) {
      report.missing.push_back(name);
      return;
    }
    used.insert(name);
    const torch::Tensor& src = *it->second.second;
    if (src.sizes() != target.sizes()) {
      report.mismatched.push_back(fmt::format("{}: file {} vs module {}", name,
                                              shape_string(src.sizes()),
                                              shape_string(target.sizes())));
      return;
    }
    report.loaded.push_back(name);
    copies.emplace_back(target, &src);
  };
  for (const auto& p : module.named_parameters(/*recurse=*/true)) visit(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) visit(b.key(), b.value());
  for (const auto& k : source_order) {
    if (!used.count(k)) report.unexpected.push_back(k);
  }

  if (options.strict &&
      (!report.missing.empty() || !report.unexpected.empty() || !report.mismatched.empty())) {
    std::vector<std::string> parts;
    if (!report.missing.empty())
      parts.push_back(fmt::format("{} missing key(s): {}", report.missing.size(),
                                  join_limited(report.missing)));
    if (!report.unexpected.empty())
      parts.push_back(fmt::format("{} unexpected key(s): {}", report.unexpected.size(),
                                  join_limited(report.unexpected)));
    if (!report.mismatched.empty())
      parts.push_back(fmt::format("{} shape mismatch(es): {}", report.mismatched.size(),
                                  join_limited(report.mismatched)));
    throw InvalidArgument(fmt::format("{}: {}", where, fmt::join(parts, "; ")));
  }
  torch::NoGradGuard no_grad;
  for (auto& [target, src] : copies) target.copy_(*src);
  return report;
}

std::string dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat:
      return "float32";
    case torch::kDouble:
      return "float64";
    case torch::kHalf:
      return "float16";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kLong:
      return "int64";
    case torch::kInt:
      return "int32";
    case torch::kShort:
      return "int16";
    case torch::kChar:
      return "int8";
    case torch::kByte:
      return "uint8";
    case torch::kBool:
      return "bool";
    case torch::kComplexFloat:
      return "complex64";
    case torch::kComplexDouble:
      return "complex128";
    default:
      return c10::toString(type);
  }
}

}  // namespace imcap
