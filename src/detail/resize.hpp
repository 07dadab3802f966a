// The image resize's internals that tests reach (src/image.cpp).
#pragma once

namespace imcap::detail {

/// Whether the horizontal resize pass may use its SSE4.1 kernel (where the CPU has it). Tests
/// turn it off to compare the kernel with the scalar loop, byte for byte. On by default.
bool& resize_simd_enabled();

}  // namespace imcap::detail
