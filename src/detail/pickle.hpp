// A restricted unpickler: reads Python pickles (protocols 0 to 5) into plain values without
// ever executing code. Globals are checked against an allowlist; objects of other classes are
// recorded (class name + state) only when options allow it, and never constructed.
//
//   imcap::UnpickleOptions options;
//   options.allow_objects = true;  // e.g. a pickled vocabulary.Vocabulary instance
//   auto value = imcap::unpickle(bytes, options, "vocab.pkl");
//   const imcap::PickleValue* word2idx = value->get("word2idx");
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace imcap::detail {

struct PickleValue;
using PickleValuePtr = std::shared_ptr<PickleValue>;

/// A storage referenced by a torch.save persistent id: ('storage', torch.FloatStorage, key,
/// location, numel).
struct PickleStorageRef {
  std::string type_name;   ///< e.g. "FloatStorage" (without the "torch." module)
  std::string key;         ///< the storage's key in the file
  std::string location;    ///< the device it was saved from, e.g. "cpu", "cuda:0"
  std::int64_t numel = 0;  ///< number of elements of the storage
};

/// A tensor rebuilt by torch._utils._rebuild_tensor_v2 (a view into a storage).
struct PickleTensorRef {
  PickleValuePtr storage;             ///< a value of kind kStorage
  std::int64_t storage_offset = 0;    ///< in elements
  std::vector<std::int64_t> sizes;    ///< shape
  std::vector<std::int64_t> strides;  ///< in elements
  bool requires_grad = false;         ///< saved flag (ignored when loading)
};

/// One unpickled value. Containers hold shared pointers: a value memoized once and referenced
/// twice (e.g. one storage used by two tensors) is the same object.
struct PickleValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kBigInt,  ///< an integer beyond 64 bits; `text` holds its little-endian two's complement bytes
    kFloat,
    kString,  ///< UTF-8 text in `text`
    kBytes,   ///< raw bytes in `text` (bytes and bytearray)
    kList,
    kTuple,
    kSet,     ///< set or frozenset, elements in `items`
    kDict,    ///< ordered `entries`; an OrderedDict's attributes (e.g. _metadata) in `attributes`
    kObject,  ///< an instance of a class outside the allowlist: `text` = "module.Class",
              ///< `items` = constructor arguments, `attributes` = its dict state
    kGlobal,  ///< a reference to a class or function, "module.name" in `text`
    kStorage,
    kTensor,
  };

  Kind kind = Kind::kNone;
  bool boolean = false;
  std::int64_t integer = 0;
  double number = 0.0;
  std::string text;
  std::vector<PickleValuePtr> items;
  std::vector<std::pair<PickleValuePtr, PickleValuePtr>> entries;
  std::vector<std::pair<PickleValuePtr, PickleValuePtr>> attributes;
  PickleValuePtr state;  ///< kObject: a BUILD state that is not a dict (else null)
  PickleStorageRef storage;
  PickleTensorRef tensor;

  /// The entry (kDict) or attribute (kObject, kDict) whose key is the string `key`, or null.
  const PickleValue* get(std::string_view key) const;
  /// "dict", "str", "vocabulary.Vocabulary", ... for error messages.
  std::string type_name() const;
  bool is_string() const { return kind == Kind::kString; }
  bool is_int() const { return kind == Kind::kInt; }

  // Bookkeeping of the unpickler: nesting depth, whether the value is inside another one (then
  // it may no longer change, which rules out cycles), and the dict key index.
  int depth = 1;
  bool frozen = false;
  std::unordered_map<std::string, std::size_t> key_index;
  std::unordered_map<std::string, std::size_t> attribute_index;
};

/// Options for unpickle(). The limits bound memory and recursion on hostile input.
struct UnpickleOptions {
  /// Record instances of classes outside the allowlist (NEWOBJ + BUILD) as kObject values
  /// instead of rejecting them. Calling such a class (REDUCE) is always rejected. Default false.
  bool allow_objects = false;
  /// With allow_objects: also record instances of torch.nn.modules.* and torch.optim.* classes
  /// (the whole pickled modules and optimizers of `torch.save(model)` checkpoints), read
  /// collections.defaultdict as a dict, and accept legacy torch.save's ('module', class, ...)
  /// persistent ids. Nothing is called either way. Default false.
  bool allow_torch_modules = false;
  /// Maximum nesting depth of containers. Default 200.
  int max_depth = 200;
  /// Maximum number of memo entries. Default 2^24.
  std::size_t max_memo = std::size_t{1} << 24;
  /// Turns a persistent id (BINPERSID) into a value; null = persistent ids are a FormatError.
  std::function<PickleValuePtr(const PickleValuePtr& pid)> persistent_load;
};

/// Unpickles `data`. `name` (a file name) prefixes error messages. Throws SecurityError naming
/// the global for a global outside the allowlist, FormatError on malformed or truncated data.
/// When `consumed` is given, it receives the number of bytes up to and including STOP (several
/// pickles may follow each other, as in legacy torch.save files).
PickleValuePtr unpickle(std::string_view data, const UnpickleOptions& options = {},
                        const std::string& name = "<pickle>", std::size_t* consumed = nullptr);

/// Whether "module.name" is a global the unpickler accepts in a torch state-dict file.
bool is_allowed_pickle_global(std::string_view qualified_name);

}  // namespace imcap::detail
