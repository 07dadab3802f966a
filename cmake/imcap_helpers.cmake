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
