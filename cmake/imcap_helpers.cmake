# imcap_setup_target(<target>): the warnings and sanitizer flags every imcap target shares.
function(imcap_setup_target target)
  target_compile_features(${target} PUBLIC cxx_std_17)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra)
  endif()
  if(IMCAP_SANITIZE)
    string(REPLACE ";" "," sanitizers "${IMCAP_SANITIZE}")
    target_compile_options(${target} PRIVATE -fsanitize=${sanitizers} -fno-omit-frame-pointer)
    get_target_property(type ${target} TYPE)
    if(type MATCHES "LIBRARY")
      # Programs that link an instrumented library need the sanitizer runtimes too.
      target_link_options(${target} PUBLIC -fsanitize=${sanitizers})
    else()
      target_link_options(${target} PRIVATE -fsanitize=${sanitizers})
    endif()
    # UB is an error, not a warning that a passing test run hides.
    target_compile_options(${target} PRIVATE -fno-sanitize-recover=all)
    if(type STREQUAL "EXECUTABLE")
      target_sources(${target} PRIVATE ${PROJECT_SOURCE_DIR}/cmake/sanitizer_defaults.cpp)
    endif()
  endif()
endfunction()

# imcap_use_pch(<target>): precompile the LibTorch headers for <target>; each
# translation unit that includes them otherwise costs ~20 s on two cores.
function(imcap_use_pch target)
  if(IMCAP_USE_PCH)
    target_precompile_headers(${target} PRIVATE <torch/torch.h>)
  endif()
endfunction()

# imcap_find_aten_openmp(): sets IMCAP_WITH_OPENMP. ATen's at::parallel_for is a header template
# that runs its body on several threads only when the calling code is compiled with OpenMP
# (_OPENMP) and LibTorch was built with the OpenMP backend (ATen/Config.h); otherwise imcap's own
# splits (decoding steps, the fused loss, Adam) silently run on one thread. Only with GCC: Torch
# links GCC's libgomp, and clang's OpenMP is a second runtime (libomp).
macro(imcap_find_aten_openmp)
  set(IMCAP_WITH_OPENMP OFF)
  if(IMCAP_OPENMP)
    find_file(IMCAP_ATEN_CONFIG ATen/Config.h PATHS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH)
    if(NOT IMCAP_ATEN_CONFIG)
      find_file(IMCAP_ATEN_CONFIG ATen/Config.h)
    endif()
    set(aten_openmp OFF)
    if(IMCAP_ATEN_CONFIG)
      file(STRINGS ${IMCAP_ATEN_CONFIG} aten_openmp_line REGEX "define AT_PARALLEL_OPENMP 1")
      if(aten_openmp_line)
        set(aten_openmp ON)
      endif()
    endif()
    if(aten_openmp AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      find_package(OpenMP COMPONENTS CXX)
      # LibTorch distributions that bundle their own libgomp (pip wheels, the official zips
      # ship lib/libgomp-<hash>.so.1): imcap links that one, so that the process has one
      # OpenMP runtime and at::set_num_threads governs imcap's regions too. (A glob, because
      # the file name carries a hash.)
      set(IMCAP_TORCH_GOMP "")
      if(TORCH_INSTALL_PREFIX)
        file(GLOB torch_gomp "${TORCH_INSTALL_PREFIX}/lib/libgomp*.so*")
        if(torch_gomp)
          list(GET torch_gomp 0 IMCAP_TORCH_GOMP)
        endif()
      endif()
      if(OpenMP_CXX_FOUND)
        set(IMCAP_WITH_OPENMP ON)
      else()
        message(WARNING "LibTorch uses OpenMP but the compiler's OpenMP was not found: imcap's "
                        "at::parallel_for splits will run on one thread")
      endif()
    elseif(aten_openmp)
      message(STATUS "imcap: ${CMAKE_CXX_COMPILER_ID} is not GCC; imcap's at::parallel_for "
                     "splits run on one thread (LibTorch's own operations are unaffected)")
    endif()
  endif()
  if(IMCAP_WITH_OPENMP AND IMCAP_TORCH_GOMP)
    message(STATUS "imcap: OpenMP for at::parallel_for: ON, LibTorch's ${IMCAP_TORCH_GOMP}")
  else()
    message(STATUS "imcap: OpenMP for at::parallel_for: ${IMCAP_WITH_OPENMP}")
  endif()
endmacro()

# imcap_check_torch_source(<result> <source> [DEFINITIONS d...] [INCLUDES dir...]
#                          [LIBRARIES lib...]): whether a C++17 program builds and links against
# Torch (TORCH_INCLUDE_DIRS, TORCH_CXX_FLAGS, TORCH_LIBRARIES) plus what is given. The result is
# cached, as check_cxx_source_compiles does.
include(CheckCXXSourceCompiles)
include(CMakePushCheckState)
function(imcap_check_torch_source result source)
  cmake_parse_arguments(arg "" "" "DEFINITIONS;INCLUDES;LIBRARIES" ${ARGN})
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_QUIET ON)
  set(CMAKE_REQUIRED_INCLUDES ${TORCH_INCLUDE_DIRS} ${arg_INCLUDES})
  set(CMAKE_REQUIRED_DEFINITIONS ${arg_DEFINITIONS} ${TORCH_CXX_FLAGS})
  set(CMAKE_REQUIRED_FLAGS "-std=c++17")
  set(CMAKE_REQUIRED_LIBRARIES ${TORCH_LIBRARIES} ${arg_LIBRARIES})
  check_cxx_source_compiles("${source}" ${result})
  cmake_pop_check_state()
endfunction()

# imcap_set_install_rpath(<target> <dir>): the installed <target>, which lives in <dir> under the
# prefix, finds libimcap through a RUNPATH relative to itself ($ORIGIN/../lib from bin/), and
# LibTorch and the other libraries it links from outside the system paths (the official LibTorch
# zip in /opt/libtorch/lib, a wheel's torch/lib) through their absolute folders. Without it an
# installed imcap does not start. A CMAKE_INSTALL_RPATH given by the user wins.
function(imcap_set_install_rpath target dir)
  if(APPLE OR DEFINED CMAKE_INSTALL_RPATH)
    return()
  endif()
  file(RELATIVE_PATH to_lib "/prefix/${dir}" "/prefix/${CMAKE_INSTALL_LIBDIR}")
  if(to_lib STREQUAL "")
    set(origin "$ORIGIN")
  else()
    set(origin "$ORIGIN/${to_lib}")
  endif()
  set_target_properties(${target} PROPERTIES
    INSTALL_RPATH "${origin}" INSTALL_RPATH_USE_LINK_PATH ON)
endfunction()

# imcap_check_torch_abi(): refuses, at configure time, a LibTorch whose C++ library ABI
# (_GLIBCXX_USE_CXX11_ABI, in TORCH_CXX_FLAGS) does not match the C++ libraries imcap links
# (fmt): the official "pre-cxx11 ABI" zips against Debian's libraries otherwise fail only at link
# time, with pages of undefined std::__cxx11 symbols.
function(imcap_check_torch_abi)
  string(REGEX MATCH "_GLIBCXX_USE_CXX11_ABI=([01])" abi_flag "${TORCH_CXX_FLAGS}")
  set(torch_abi "${CMAKE_MATCH_1}")
  if(torch_abi STREQUAL "")
    return()
  endif()
  message(STATUS "imcap: LibTorch uses _GLIBCXX_USE_CXX11_ABI=${torch_abi}")
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_QUIET ON)
  set(CMAKE_REQUIRED_DEFINITIONS -D_GLIBCXX_USE_CXX11_ABI=${torch_abi})
  set(CMAKE_REQUIRED_LIBRARIES fmt::fmt)
  check_cxx_source_compiles([[
#include <fmt/format.h>
#include <string>
int main() { std::string s = fmt::format("{}", 1); return s.size() == 1 ? 0 : 1; }
]] IMCAP_FMT_MATCHES_TORCH_ABI_${torch_abi})
  cmake_pop_check_state()
  if(NOT IMCAP_FMT_MATCHES_TORCH_ABI_${torch_abi})
    message(FATAL_ERROR
      "LibTorch (${TORCH_INSTALL_PREFIX}) is built with -D_GLIBCXX_USE_CXX11_ABI=${torch_abi}, "
      "but fmt (${fmt_DIR}) does not link with that C++ library ABI. With Debian's libraries, "
      "use a LibTorch built with the C++11 ABI: the 'cxx11 ABI' zip from pytorch.org "
      "(libtorch-cxx11-abi-shared-with-deps-*.zip; from 2.7 on every zip is), a PyTorch wheel "
      "of 2.7 or newer, or Debian's libtorch-dev. Or build fmt with "
      "-D_GLIBCXX_USE_CXX11_ABI=${torch_abi} and point fmt_DIR at it. See docs/building.md.")
  endif()
endfunction()
