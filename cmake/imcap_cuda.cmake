# imcap_setup_cuda_graphs(<target> <source>): CUDA graphs where LibTorch has CUDA.
#
# ATen's CUDAGraph lives in libtorch_cuda and its header needs the CUDA runtime's headers, which
# LibTorch's CUDA builds bring along through their imported targets (Debian's CPU-only
# libtorch-dev ships the header but not the rest). A small program that captures and replays a
# graph is compiled and linked against Torch, and if that fails with a LibTorch that has CUDA,
# again with the CUDA toolkit's include folders. Where it builds, <source> alone gets
# IMCAP_HAVE_CUDA_GRAPHS=1 (it runs the same loop eagerly without). IMCAP_CUDA_GRAPHS=OFF turns
# the probe off.
include(CheckCXXSourceCompiles)
include(CMakePushCheckState)

option(IMCAP_CUDA_GRAPHS "Replay greedy decoding from CUDA graphs where LibTorch has CUDA" ON)

set(_imcap_cuda_graph_probe [=[
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
int main(int argc, char**) {
  if (argc > 5) {
    const c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
    at::cuda::CUDAGraph graph;
    graph.capture_begin();
    graph.capture_end();
    graph.replay();
  }
  return 0;
}]=])

function(_imcap_probe_cuda_graphs result extra_includes)
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_QUIET ON)
  set(CMAKE_REQUIRED_INCLUDES ${TORCH_INCLUDE_DIRS} ${extra_includes})
  set(CMAKE_REQUIRED_DEFINITIONS ${TORCH_CXX_FLAGS})
  set(CMAKE_REQUIRED_FLAGS "-std=c++17")
  set(CMAKE_REQUIRED_LIBRARIES ${TORCH_LIBRARIES})
  check_cxx_source_compiles("${_imcap_cuda_graph_probe}" ${result})
  cmake_pop_check_state()
endfunction()

function(imcap_setup_cuda_graphs target source)
  if(NOT IMCAP_CUDA_GRAPHS)
    message(STATUS "imcap: CUDA graphs off (IMCAP_CUDA_GRAPHS=OFF)")
    return()
  endif()
  set(torch_has_cuda OFF)
  if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES OR C10_CUDA_LIBRARY)
    set(torch_has_cuda ON)
  endif()
  _imcap_probe_cuda_graphs(IMCAP_HAVE_CUDA_GRAPHS "")
  set(includes "")
  if(NOT IMCAP_HAVE_CUDA_GRAPHS AND torch_has_cuda)
    find_package(CUDAToolkit QUIET)
    if(CUDAToolkit_FOUND)
      _imcap_probe_cuda_graphs(IMCAP_HAVE_CUDA_GRAPHS_WITH_TOOLKIT "${CUDAToolkit_INCLUDE_DIRS}")
      if(IMCAP_HAVE_CUDA_GRAPHS_WITH_TOOLKIT)
        set(IMCAP_HAVE_CUDA_GRAPHS ON)
        set(includes ${CUDAToolkit_INCLUDE_DIRS})
      endif()
    endif()
  endif()
  if(IMCAP_HAVE_CUDA_GRAPHS)
    set_property(SOURCE ${source} APPEND PROPERTY COMPILE_DEFINITIONS IMCAP_HAVE_CUDA_GRAPHS=1)
    if(includes)
      set_property(SOURCE ${source} APPEND PROPERTY INCLUDE_DIRECTORIES ${includes})
    endif()
    message(STATUS "imcap: CUDA graphs for greedy decoding: on")
  elseif(torch_has_cuda)
    message(WARNING "imcap: LibTorch has CUDA, but a program using at::cuda::CUDAGraph did not "
                    "build (see CMakeFiles/CMakeConfigureLog.yaml or CMakeError.log): greedy "
                    "decoding runs without CUDA graphs")
  else()
    message(STATUS "imcap: CUDA graphs for greedy decoding: off (LibTorch without CUDA)")
  endif()
endfunction()
