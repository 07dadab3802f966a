# imcap_setup_cuda_graphs(<target> <source>): CUDA graphs where LibTorch has CUDA.
#
# ATen's CUDAGraph lives in libtorch_cuda and its header needs the CUDA runtime's headers, which
# LibTorch's CUDA builds bring along through their imported targets (Debian's CPU-only
# libtorch-dev ships the header but not the rest). A small program that captures and replays a
# graph is compiled and linked against Torch, and if that fails with a LibTorch that has CUDA,
# again with the CUDA toolkit's include folders. Where it builds, <source> alone gets
# IMCAP_HAVE_CUDA_GRAPHS=1 (it runs the same loop eagerly without). IMCAP_CUDA_GRAPHS=OFF turns
# the probe off.
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

function(imcap_setup_cuda_graphs target source)
  if(NOT IMCAP_CUDA_GRAPHS)
    message(STATUS "imcap: CUDA graphs off (IMCAP_CUDA_GRAPHS=OFF)")
    return()
  endif()
  set(torch_has_cuda OFF)
  if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES OR C10_CUDA_LIBRARY)
    set(torch_has_cuda ON)
  endif()
  imcap_check_torch_source(IMCAP_HAVE_CUDA_GRAPHS "${_imcap_cuda_graph_probe}")
  set(includes "")
  if(NOT IMCAP_HAVE_CUDA_GRAPHS AND torch_has_cuda)
    find_package(CUDAToolkit QUIET)
    if(CUDAToolkit_FOUND)
      imcap_check_torch_source(IMCAP_HAVE_CUDA_GRAPHS_WITH_TOOLKIT "${_imcap_cuda_graph_probe}"
                               INCLUDES ${CUDAToolkit_INCLUDE_DIRS})
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
