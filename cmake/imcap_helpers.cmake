# imcap_setup_target(<target>): the warnings and sanitizer flags every imcap target shares.
function(imcap_setup_target target)
  target_compile_features(${target} PUBLIC cxx_std_17)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra)
  endif()
  if(IMCAP_SANITIZE)
    string(REPLACE ";" "," sanitizers "${IMCAP_SANITIZE}")
    target_compile_options(${target} PRIVATE -fsanitize=${sanitizers} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${sanitizers})
  endif()
endfunction()

# imcap_use_pch(<target>): precompile the LibTorch headers for <target>; each
# translation unit that includes them otherwise costs ~20 s on two cores.
function(imcap_use_pch target)
  if(IMCAP_USE_PCH)
    target_precompile_headers(${target} PRIVATE <torch/torch.h>)
  endif()
endfunction()
