// safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
// "__metadata__": {...}}, then the raw little-endian tensor bytes, packed without gaps.
//
//   imcap::save_safetensors("features.safetensors", tensors, {{"encoder", "resnet50"}});
//   std::map<std::string, std::string> metadata;
//   imcap::TensorMap back = imcap::load_safetensors("features.safetensors", &metadata);
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "imcap/weights.hpp"

namespace imcap {

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

}  // namespace imcap
