// The one Catch2 include of the tests: Catch2 2.x (Debian 12) or 3.x (Debian 13, Ubuntu 24.04).
// The tests are written against the 2.x names; under 3.x this maps the few that moved.
#pragma once

#if IMCAP_CATCH2_MAJOR >= 3
#include <catch2/catch_all.hpp>

#include <string>

namespace Catch {
// 2.x's Catch::Contains is 3.x's ContainsSubstring (3.x's Matchers::Contains is for ranges).
inline Matchers::StringContainsMatcher Contains(const std::string& text,
                                                CaseSensitive sensitivity = CaseSensitive::Yes) {
  return Matchers::ContainsSubstring(text, sensitivity);
}
using Matchers::EndsWith;
using Matchers::StartsWith;
}  // namespace Catch
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
