// Weight files: reading PyTorch's torch.save files (zip and legacy formats) and safetensors
// into named tensors, and copying named tensors into a LibTorch module. Reading never executes
// code: pickles go through imcap's restricted unpickler.
//
//   imcap::TensorMap tensors = imcap::load_weights("resnet50-0676ba61.pth");
//   imcap::LoadOptions options;
//   options.ignore = {"fc\\..*"};  // torchvision's classifier
//   imcap::load_state_dict(*encoder->backbone, tensors, options);
//   imcap::save_safetensors("resnet50.safetensors", tensors, {{"encoder", "resnet50"}});
//   std::map<std::string, std::string> metadata;
//   imcap::TensorMap back = imcap::load_safetensors("resnet50.safetensors", &metadata);
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

namespace imcap {

/// Named tensors in file order, with lookup by name. Names are unique.
class TensorMap {
 public:
  using Entry = std::pair<std::string, torch::Tensor>;

  /// Appends a tensor. Throws InvalidArgument when the name is already present.
  void insert(std::string name, torch::Tensor tensor);
  /// Whether a tensor of this name is present.
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  /// The tensor of this name. Throws InvalidArgument naming it when absent.
  const torch::Tensor& at(const std::string& name) const;
  /// The tensor of this name, or null when absent.
  const torch::Tensor* find(const std::string& name) const;

  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  std::vector<Entry>::const_iterator begin() const { return entries_.begin(); }
  std::vector<Entry>::const_iterator end() const { return entries_.end(); }
  const std::vector<Entry>& entries() const { return entries_; }
  /// Sum of the element counts of all tensors.
  std::int64_t total_numel() const;
  /// The file the tensors were read from (load_weights, load_torch_file, load_safetensors), named
  /// in load_state_dict()'s errors; empty for tensors gathered in memory.
  const std::string& source() const { return source_; }
  void set_source(std::string source) { source_ = std::move(source); }

 private:
  std::vector<Entry> entries_;
  std::string source_;
  std::unordered_map<std::string, std::size_t> index_;
};

/// The formats load_weights() recognizes.
enum class WeightsFormat {
  kTorchZip,     ///< torch.save, PyTorch >= 1.6 (a zip archive holding data.pkl)
  kTorchLegacy,  ///< torch.save(..., _use_new_zipfile_serialization=False), older torchvision files
  kSafetensors,  ///< Hugging Face safetensors
};

/// PyTorch's name of a tensor type, as Python prints it without "torch.": "float32",
/// "bfloat16", "int64", "uint8", "bool" ... (LibTorch's own name for types Python has none for).
std::string dtype_name(torch::ScalarType type);

/// "torch-zip", "torch-legacy" or "safetensors".
std::string to_string(WeightsFormat format);

/// Options for reading torch.save files.
struct TorchLoadOptions {
  /// Key of the state dict inside a checkpoint dict, e.g. "state_dict". Empty (default): the top
  /// level when it is a dict of tensors, else the first of "state_dict", "model_state_dict",
  /// "model", "net", "module" that is.
  std::string state_dict_key;
  /// Refuse files larger than this many bytes. Default 64 GiB.
  std::uint64_t max_file_bytes = std::uint64_t{64} << 30;
};

/// Guesses the format from the first bytes. Throws IoError when the file cannot be read and
/// FormatError naming the file when it is none of the formats.
WeightsFormat detect_weights_format(const std::string& path);

/// Reads a torch.save file (zip or legacy format) holding a state dict, or a checkpoint dict
/// that nests one (see TorchLoadOptions::state_dict_key). An OrderedDict's _metadata is ignored.
/// Tensors keep their strides and share storage where the file shares it. Throws FormatError
/// on malformed files, SecurityError on pickles that ask for anything beyond tensors and plain
/// containers.
TensorMap load_torch_file(const std::string& path, const TorchLoadOptions& options = {});

/// Reads any supported weight file (detect_weights_format, then load_torch_file or
/// load_safetensors).
TensorMap load_weights(const std::string& path, const TorchLoadOptions& options = {});

// ---- safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
// "__metadata__": {...}}, then the raw little-endian tensor bytes, packed without gaps. ----

/// Reads a safetensors file; `metadata`, when given, receives its __metadata__. Tensors come in
/// the order of their data offsets. Throws IoError / FormatError naming the file and the tensor.
TensorMap load_safetensors(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr);

/// Parses safetensors bytes already in memory; `name` prefixes error messages.
TensorMap parse_safetensors(std::string_view bytes, const std::string& name = "<safetensors>",
                            std::map<std::string, std::string>* metadata = nullptr);

/// Writes a safetensors file crash-safely, tensors in the map's order (made contiguous, moved
/// to CPU, little-endian), with optional string metadata. Throws InvalidArgument on a dtype
/// safetensors cannot hold, IoError when the file cannot be written.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The bytes save_safetensors() writes. The header is padded with spaces to a multiple of 8.
std::string serialize_safetensors(const TensorMap& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

/// How file keys map onto a module's parameter and buffer names, and how strict loading is.
struct LoadOptions {
  /// Removed from the start of every file key that has it (e.g. "module." of DataParallel).
  /// Default: none.
  std::string strip_prefix;
  /// (ECMAScript regex, replacement) pairs applied in order with std::regex_replace after
  /// strip_prefix, e.g. {"^resnet\\.", "backbone."}. Default: none.
  std::vector<std::pair<std::string, std::string>> rename;
  /// Prepended to every key after renaming. Default: none.
  std::string add_prefix;
  /// Regexes matched (whole name) against the renamed file keys and the module's names: matches
  /// are neither loaded nor reported missing or unexpected, e.g. "fc\\..*". Default: none.
  std::vector<std::string> ignore;
  /// Strict (default true): any missing key, unexpected key or shape mismatch throws
  /// InvalidArgument listing all of them, and nothing is copied. Non-strict: what matches is
  /// copied and the rest is reported.
  bool strict = true;
};

/// What load_state_dict() did.
struct LoadReport {
  std::vector<std::string> loaded;      ///< module names that received a tensor
  std::vector<std::string> missing;     ///< module names that no file key maps to
  std::vector<std::string> unexpected;  ///< renamed file keys that match no module name
  std::vector<std::string> mismatched;  ///< "name: file [a, b] vs module [c, d]"
  std::vector<std::string> ignored;     ///< renamed file keys matched by LoadOptions::ignore
};

/// Copies tensors into the module's parameters and buffers (e.g. running_mean, running_var,
/// num_batches_tracked) without recording gradients, converting dtype and device as needed.
/// Throws InvalidArgument on a bad regex, and in strict mode on any mismatch (see LoadOptions);
/// the message starts with tensors.source() when it is set.
LoadReport load_state_dict(torch::nn::Module& module, const TensorMap& tensors,
                           const LoadOptions& options = {});

/// The name a file key gets under the options' strip_prefix, rename and add_prefix.
std::string remap_key(const std::string& key, const LoadOptions& options);

}  // namespace imcap
