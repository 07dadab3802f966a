// Whole pickled torch.nn.Modules in torch.save checkpoints, as sgrvinod's Show, Attend and Tell
// saves them (internal).
#pragma once

#include <cstdint>
#include <string>

#include "imcap/weights.hpp"

namespace imcap::detail {

/// The state dict (parameters and persistent buffers under their dotted names) of the module
/// pickled whole under `key` of the checkpoint dict in `path` (torch.save, zip or legacy
/// format), or of a state dict saved under that key. Read by the restricted unpickler: the
/// classes of torch.nn modules, optimizers and the project's own modules are recorded by name,
/// and nothing is called or imported. Throws FormatError naming the file and the key when the
/// key is missing or holds neither; SecurityError for the globals load_weights refuses beyond
/// those classes.
TensorMap load_pickled_module(const std::string& path, const std::string& key,
                              std::uint64_t max_file_bytes = std::uint64_t{64} << 30);

}  // namespace imcap::detail
