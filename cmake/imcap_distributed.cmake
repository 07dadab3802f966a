# imcap_setup_distributed(<target> <source>): data-parallel training on LibTorch's own c10d.
#
# c10d's process-group headers compile only with USE_C10D_GLOO / USE_C10D_NCCL defined, and only
# where LibTorch was built with that backend and exports it (Debian's libtorch has Gloo and needs
# libgloo-dev's headers; CUDA builds of LibTorch have NCCL). Each backend is probed by compiling
# and linking a small program against Torch; the defines go on <source> alone, the one file that
# talks to c10d. With neither the feature is built off: `imcap train` then says so at run time.
option(IMCAP_DISTRIBUTED "Data-parallel training on c10d (Gloo, NCCL) where LibTorch has it" ON)

function(_imcap_probe_c10d result backend_define source_text)
  imcap_check_torch_source(${result} "${source_text}" DEFINITIONS -D${backend_define}
                           LIBRARIES ${ARGN})
endfunction()

function(imcap_setup_distributed target source)
  if(NOT IMCAP_DISTRIBUTED)
    message(STATUS "imcap: distributed training off (IMCAP_DISTRIBUTED=OFF)")
    return()
  endif()
  find_library(IMCAP_GLOO_LIBRARY gloo)
  set(gloo_libs "")
  if(IMCAP_GLOO_LIBRARY)
    set(gloo_libs ${IMCAP_GLOO_LIBRARY})
  endif()
  _imcap_probe_c10d(IMCAP_HAVE_C10D_GLOO USE_C10D_GLOO [=[
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
int main(int argc, char**) {
  if (argc > 5) {
    c10d::TCPStoreOptions so;
    auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("p", store), 0, 1, opts);
    pg->barrier()->wait();
  }
  return 0;
}]=] ${gloo_libs})
  _imcap_probe_c10d(IMCAP_HAVE_C10D_NCCL USE_C10D_NCCL [=[
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
int main(int argc, char**) {
  if (argc > 5) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    c10::intrusive_ptr<c10d::Store> store;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, 0, 1, opts);
    pg->barrier()->wait();
  }
  return 0;
}]=])
  if(NOT IMCAP_HAVE_C10D_GLOO AND NOT IMCAP_HAVE_C10D_NCCL)
    message(WARNING "imcap: LibTorch's c10d is not usable here (no Gloo: missing libgloo-dev "
                    "headers, or a LibTorch built without distributed support; no NCCL): "
                    "`imcap train` runs on one process only")
    return()
  endif()
  set(defs "")
  if(IMCAP_HAVE_C10D_GLOO)
    list(APPEND defs USE_C10D_GLOO IMCAP_HAVE_C10D_GLOO=1)
    if(gloo_libs)
      target_link_libraries(${target} PRIVATE ${gloo_libs})
    endif()
  endif()
  if(IMCAP_HAVE_C10D_NCCL)
    list(APPEND defs USE_C10D_NCCL IMCAP_HAVE_C10D_NCCL=1)
  endif()
  set_property(SOURCE ${source} APPEND PROPERTY COMPILE_DEFINITIONS ${defs})
  # The precompiled header was made without the c10d defines; this one file parses its own.
  set_property(SOURCE ${source} PROPERTY SKIP_PRECOMPILE_HEADERS ON)
  if(IMCAP_HAVE_C10D_GLOO AND IMCAP_HAVE_C10D_NCCL)
    message(STATUS "imcap: distributed training on c10d: Gloo and NCCL")
  elseif(IMCAP_HAVE_C10D_GLOO)
    message(STATUS "imcap: distributed training on c10d: Gloo (no NCCL in this LibTorch)")
  else()
    message(STATUS "imcap: distributed training on c10d: NCCL only (no Gloo: CPU training "
                   "runs on one process)")
  endif()
endfunction()
