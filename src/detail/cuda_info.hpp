// What the CUDA runtime says about a device (internal). Defined in cuda_graph_greedy.cpp, the
// one file compiled against CUDA's headers where LibTorch has CUDA.
#pragma once

#include <string>

namespace imcap::detail {

/// The name of CUDA device `index` ("NVIDIA H200"), or "" where this build has no CUDA.
std::string cuda_device_name(int index);

}  // namespace imcap::detail
