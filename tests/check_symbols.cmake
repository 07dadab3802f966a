# Fails when one of FILES (';'-separated) imports a std::filesystem symbol. LibTorch 2.5 and
# newer (the official zips and the wheels) export the std::filesystem of the libstdc++ they were
# built with; a program's calls then bind to those copies, which need not match its own headers,
# and crash (seen on the GPU machine's 2.11). imcap does without std::filesystem; this keeps it so.
foreach(file IN LISTS FILES)
  execute_process(COMMAND ${NM} -D --undefined-only ${file}
                  OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} failed (${rc}) on ${file}")
  endif()
  string(REGEX MATCHALL "[^\n]*St10filesystem[^\n]*" found "${symbols}")
  if(found)
    list(JOIN found "\n" lines)
    message(FATAL_ERROR "${file} imports std::filesystem (docs/building.md#libtorch-2x):\n${lines}")
  endif()
  message(STATUS "${file}: no std::filesystem imports")
endforeach()
