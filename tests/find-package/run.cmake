# Builds tests/find-package/consumer against imcap, found with find_package(imcap):
#   MODE=install  installs the build into a temporary prefix first (the install tree);
#   MODE=build    points imcap_DIR at the build tree (its exported targets).
# Then runs the consumer, which must exit 0.
set(work ${IMCAP_BINARY_DIR}/find-package-${MODE})
file(REMOVE_RECURSE ${work})
file(MAKE_DIRECTORY ${work})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()

if(MODE STREQUAL "install")
  # Installed, then moved: the installed CLI and library find each other (and LibTorch) through
  # their RUNPATHs ($ORIGIN/../lib), not through the build tree or LD_LIBRARY_PATH.
  run(${CMAKE_COMMAND} --install ${IMCAP_BINARY_DIR} --prefix ${work}/staging)
  file(RENAME ${work}/staging ${work}/prefix)
  if(EXISTS ${work}/prefix/include/imcap/version.hpp.in)
    message(FATAL_ERROR "the install tree ships include/imcap/version.hpp.in")
  endif()
  if(EXISTS ${work}/prefix/bin/imcap)
    set(ENV{LD_LIBRARY_PATH} "")
    run(${work}/prefix/bin/imcap --version)
    run(${work}/prefix/bin/imcap synth --out ${work}/synth --train 4 --val 2 --size 32)
    run(${work}/prefix/bin/imcap info --annotations ${work}/synth/captions_train.json)
  endif()
  set(locate -DCMAKE_PREFIX_PATH=${work}/prefix -DBUILD_EXAMPLES=ON)
else()
  set(locate -Dimcap_DIR=${IMCAP_BINARY_DIR})
endif()
set(launcher "")
find_program(ccache ccache)
if(ccache)
  set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${ccache})
endif()
run(${CMAKE_COMMAND} -S ${IMCAP_SOURCE_DIR}/tests/find-package/consumer -B ${work}/build
    -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release ${locate} ${launcher}
    -DIMCAP_SOURCE_DIR=${IMCAP_SOURCE_DIR})
run(${CMAKE_COMMAND} --build ${work}/build)
run(${work}/build/consumer ${IMCAP_SOURCE_DIR}/tests/data/captions_sample.json)
