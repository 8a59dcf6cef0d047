# Driver of the consumer test (registered by tests/consumer/CMakeLists.txt):
#   1. deletes WORK_DIR, so every run starts from nothing;
#   2. configures PROJECT_DIR there with the same generator and C++ compiler as
#      tessera's build, -DTESSERA_CUDA=OFF, and a PATH from which every
#      directory holding nvcc is removed (CUDACXX, CUDA_PATH, CUDA_HOME and
#      CUDAToolkit_ROOT unset), so a CPU-only consumer cannot reach nvcc;
#   3. builds it (main.cpp with -Wall -Wextra -Wpedantic -Werror);
#   4. runs the program, which checks its own numbers and prints the ledger;
#   5. checks that tessera was a subproject: TESSERA_BUILD_TESTS/EXAMPLES/
#      BENCHMARKS are OFF, no tests/examples/bench directory was generated for
#      it, googletest and Google Benchmark were not fetched, CUDA was not enabled.
cmake_minimum_required(VERSION 3.24)

foreach(var IN ITEMS TESSERA_SOURCE_DIR PROJECT_DIR WORK_DIR GENERATOR CXX_COMPILER CONFIG)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

# Runs a command in the nvcc-free environment; fails the test with its output
# unless it exits 0. The output is left in `step_output`.
set(step_output "")
function(run_step name)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E env ${clean_env} ${ARGN}
                  WORKING_DIRECTORY "${WORK_DIR}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  set(step_output "${out}" PARENT_SCOPE)
  if(NOT rc STREQUAL "0")
    list(JOIN ARGN " " cmd_text)
    message("---- ${name} failed (${rc}) ----\ncommand: ${cmd_text}\n${out}---- end of ${name} output ----")
    message(FATAL_ERROR "consumer: ${name} failed")
  endif()
endfunction()

# ---- 1. a fresh directory ----------------------------------------------------
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(build_dir "${WORK_DIR}/build")

# ---- 2. hide nvcc ------------------------------------------------------------
if(CMAKE_HOST_WIN32)
  set(path_sep ";")
  set(nvcc_name nvcc.exe)
else()
  set(path_sep ":")
  set(nvcc_name nvcc)
endif()
set(path_in "$ENV{PATH}")
if(NOT CMAKE_HOST_WIN32)
  string(REPLACE ":" ";" path_in "${path_in}")
endif()
set(path_out "")
set(hidden "")
foreach(dir IN LISTS path_in)
  if(dir STREQUAL "")
    continue()
  endif()
  if(EXISTS "${dir}/${nvcc_name}")
    list(APPEND hidden "${dir}")
  else()
    list(APPEND path_out "${dir}")
  endif()
endforeach()
list(JOIN path_out "${path_sep}" clean_path)
find_program(visible_nvcc NAMES nvcc PATHS ${path_out} NO_DEFAULT_PATH NO_CACHE)
if(visible_nvcc)
  message(FATAL_ERROR "consumer: nvcc is still on the cleaned PATH (${visible_nvcc})")
endif()
set(clean_env --unset=CUDACXX --unset=CUDAHOSTCXX --unset=CUDA_PATH --unset=CUDA_HOME --unset=CUDAToolkit_ROOT
              "PATH=${clean_path}")
if(hidden)
  message(STATUS "consumer: nvcc hidden (removed from PATH: ${hidden})")
else()
  message(STATUS "consumer: no nvcc on PATH to hide")
endif()

# ---- 2. configure --------------------------------------------------------------
set(configure_args -S "${PROJECT_DIR}" -B "${build_dir}" -G "${GENERATOR}"
                   "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${CONFIG}"
                   "-DTESSERA_SOURCE_DIR=${TESSERA_SOURCE_DIR}" -DTESSERA_CUDA=OFF)
if(GENERATOR_PLATFORM)
  list(APPEND configure_args -A "${GENERATOR_PLATFORM}")
endif()
if(GENERATOR_TOOLSET)
  list(APPEND configure_args -T "${GENERATOR_TOOLSET}")
endif()
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
run_step(configure "${CMAKE_COMMAND}" ${configure_args})
set(configure_output "${step_output}")
if(NOT configure_output MATCHES "tessera: CUDA OFF")
  message("${configure_output}")
  message(FATAL_ERROR "consumer: the configure output does not say 'tessera: CUDA OFF'")
endif()

# ---- 3. build ----------------------------------------------------------------
run_step(build "${CMAKE_COMMAND}" --build "${build_dir}" --config "${CONFIG}")

# ---- 4. run ------------------------------------------------------------------
set(exe "${build_dir}/bin/consumer${CMAKE_EXECUTABLE_SUFFIX}")
if(CMAKE_HOST_WIN32)
  set(exe "${build_dir}/bin/consumer.exe")
endif()
run_step(run "${exe}")
message(STATUS "consumer program output:\n${step_output}")
if(NOT step_output MATCHES "consumer: OK")
  message(FATAL_ERROR "consumer: the program exited 0 but did not print 'consumer: OK'")
endif()

# ---- 5. tessera was a subproject: none of its own targets came along ------------
set(problems "")
file(STRINGS "${build_dir}/CMakeCache.txt" cache_lines)
foreach(option IN ITEMS TESSERA_BUILD_TESTS TESSERA_BUILD_EXAMPLES TESSERA_BUILD_BENCHMARKS)
  if(NOT "${option}:BOOL=OFF" IN_LIST cache_lines)
    string(APPEND problems "  ${option} is not OFF in the consumer's CMakeCache.txt\n")
  endif()
endforeach()
foreach(line IN LISTS cache_lines)
  if(line MATCHES "^CMAKE_CUDA_COMPILER:[A-Z]+=(.+)$" AND NOT CMAKE_MATCH_1 MATCHES "NOTFOUND$")
    string(APPEND problems "  the consumer configured a CUDA compiler: ${CMAKE_MATCH_1}\n")
  endif()
endforeach()
set(tessera_build "${build_dir}/_deps/tessera-build")
if(NOT IS_DIRECTORY "${tessera_build}")
  string(APPEND problems "  ${tessera_build} does not exist: was tessera really added with FetchContent?\n")
endif()
foreach(subdir IN ITEMS tests examples bench)
  if(EXISTS "${tessera_build}/${subdir}")
    string(APPEND problems "  tessera's ${subdir}/ was configured in the consumer (${tessera_build}/${subdir})\n")
  endif()
endforeach()
file(GLOB deps LIST_DIRECTORIES true RELATIVE "${build_dir}/_deps" "${build_dir}/_deps/*")
foreach(dep IN LISTS deps)
  if(dep MATCHES "^(googletest|gtest|benchmark|googlebenchmark)")
    string(APPEND problems "  a test-only dependency was fetched: _deps/${dep}\n")
  endif()
endforeach()
file(GLOB_RECURSE test_programs "${build_dir}/*test_core*" "${build_dir}/*test_elementwise*")
foreach(program IN LISTS test_programs)
  string(APPEND problems "  a tessera test program exists in the consumer build: ${program}\n")
endforeach()
if(NOT problems STREQUAL "")
  message(FATAL_ERROR "consumer: tessera did not behave as a subproject:\n${problems}")
endif()
message(STATUS "consumer: built and ran against tessera::tessera; tessera's tests, examples and "
               "benchmarks were not configured (fetched deps: ${deps})")
