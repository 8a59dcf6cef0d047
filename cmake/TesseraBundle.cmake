# TESSERA_BUNDLE=ON: the build scripts/gpu-bundle makes on a CPU machine for
# a GPU machine that has nothing but a driver, the CUDA toolkit (or PyTorch's
# NVIDIA wheels) and libc (docs/cuda.md § The GPU bundle). The default build
# is unchanged when the option is OFF.
#
# What the option changes, and why:
# - the CUDA kernels are a SHARED library (lib/libtessera_cuda_kernels.so),
#   so their sm_XX fatbin is in the bundle once instead of in every binary;
#   the CUDA runtime is the shared one (libcudart.so.13 from the target), the
#   same one the headers' host code calls;
# - the unit tests with CUDA cases are ONE executable (tessera_cuda_tests) and
#   the four model examples plus their checkers ONE multi-call executable
#   (tessera_examples <name> ARGS...): the ops, models and GoogleTest they
#   share are then in the bundle once (separately they come to ~3x the size);
# - the fatbin is compressed for size (--compress-mode=size);
# - executables go to bin/, libraries to lib/, and every one has exactly the
#   RUNPATH $ORIGIN/../lib (no absolute build-machine paths);
# - dependencies are static where Debian ships an archive: GoogleTest
#   (libgtest.a, as always), PCRE2, utf8proc, libjpeg-turbo, and the
#   reference (netlib) BLAS instead of OpenBLAS: Debian's libopenblas.a holds
#   kernels for every x86 core and adds 25 MB to each binary that calls
#   cblas_sgemm. On the GPU only the tests' CPU reference results use it;
# - Google Benchmark (Debian ships only libbenchmark.so) and libgomp are the
#   shared libraries scripts/gpu-bundle copies into lib/;
# - no MPI and no sentencepiece (nothing in the bundle needs them).
option(TESSERA_BUNDLE "Build for scripts/gpu-bundle (shared kernel library, combined test and example binaries)" OFF)
set(TESSERA_CUDA_KERNELS_TYPE STATIC)
if(NOT TESSERA_BUNDLE)
  return()
endif()

if(NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
  message(FATAL_ERROR "TESSERA_BUNDLE=ON: the GPU bundle is built on Linux only")
endif()
set(TESSERA_CUDA_KERNELS_TYPE SHARED)
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
set(TESSERA_MPI OFF)
set(TESSERA_SENTENCEPIECE OFF)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/lib)
set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)
set(CMAKE_INSTALL_RPATH "\$ORIGIN/../lib")
# Unused functions and data are dropped at link time; libraries named but
# unused are not recorded as needed.
add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-ffunction-sections> $<$<COMPILE_LANGUAGE:CXX>:-fdata-sections>)
add_link_options(-Wl,--gc-sections -Wl,--as-needed)
# nvcc's "size" compression shrinks the fatbin about 15x (the default favours
# load speed); a CUDA 13 driver decompresses it when the library loads.
add_compile_options($<$<COMPILE_LANGUAGE:CUDA>:--compress-mode=size>)

# tessera_bundle_static(<target> <library file name> <message> [find_library options]):
# an imported static archive, found in the usual library directories.
function(tessera_bundle_static target file what)
  find_library(_tessera_bundle_${target} NAMES ${file} NO_CACHE ${ARGN})
  if(NOT _tessera_bundle_${target})
    message(FATAL_ERROR "TESSERA_BUNDLE=ON needs the static ${file} (${what})")
  endif()
  add_library(${target} INTERFACE IMPORTED GLOBAL)
  set_target_properties(${target} PROPERTIES INTERFACE_LINK_LIBRARIES "${_tessera_bundle_${target}}")
  message(STATUS "tessera bundle: ${target} ${_tessera_bundle_${target}}")
endfunction()
# The names TesseraDependencies.cmake looks for first: defined here, they win.
# (/usr/lib/<arch>/libblas.a itself is an alternative that may be OpenBLAS.)
tessera_bundle_static(tessera::openblas libblas.a "Debian: libblas-dev, the reference BLAS with CBLAS"
                      PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/blas NO_DEFAULT_PATH)
tessera_bundle_static(tessera::pcre2 libpcre2-8.a "Debian: libpcre2-dev")
tessera_bundle_static(tessera::utf8proc libutf8proc.a "Debian: libutf8proc-dev")
tessera_bundle_static(JPEG::JPEG libjpeg.a "Debian: libjpeg62-turbo-dev")

# tessera_bundle_targets(): called at the end of the top CMakeLists.txt, once
# tests/, examples/ and bench/ are defined. Adds
#   tessera_cuda_tests  every tests/unit/test_*.cpp with CUDA cases, one binary
#   tessera_examples    text_generate, qwen2_5_vl, minicpm_v, internvl2 and
#                       check_<each> in one binary: tessera_examples NAME ARGS...
#   tessera_bundle      builds those, tessera_bench_cuda and test_cuda_dtype_compat
function(tessera_bundle_targets)
  if(NOT TESSERA_WITH_CUDA)
    message(FATAL_ERROR "TESSERA_BUNDLE=ON needs the CUDA backend (TESSERA_CUDA=ON and nvcc)")
  endif()
  set(_unit ${PROJECT_SOURCE_DIR}/tests/unit)
  file(GLOB _sources CONFIGURE_DEPENDS ${_unit}/test_*.cpp)
  set(_cuda_sources "")
  foreach(source IN LISTS _sources)
    file(READ ${source} _text)
    # Cuda<N> typed cases: named devices, or the shared typed configurations.
    if(_text MATCHES "Cuda<|Cuda_|FloatConfigs|IntConfigs")
      list(APPEND _cuda_sources ${source})
    endif()
  endforeach()
  # tests/CMakeLists.txt's GTest targets are local to that directory.
  find_package(GTest REQUIRED)
  add_executable(tessera_cuda_tests ${_cuda_sources})
  target_include_directories(tessera_cuda_tests PRIVATE ${_unit})
  target_link_libraries(tessera_cuda_tests PRIVATE tessera::cuda tessera_warnings GTest::gtest_main)

  set(_ex ${PROJECT_SOURCE_DIR}/examples)
  set(_ex_sources ${PROJECT_SOURCE_DIR}/tests/bundle/examples_main.cpp)
  foreach(example IN ITEMS text_generate qwen2_5_vl minicpm_v internvl2)
    file(GLOB _generated ${CMAKE_BINARY_DIR}/examples/placements/${example}_*.cpp)
    if(NOT _generated)
      message(FATAL_ERROR "tessera bundle: no generated placement sources for ${example} (examples/CMakeLists.txt)")
    endif()
    set_source_files_properties(${_generated} PROPERTIES UNITY_GROUP ${example})
    set_source_files_properties(${_ex}/${example}.cpp PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON
                                COMPILE_DEFINITIONS main=tessera_example_${example}_main)
    set_source_files_properties(${PROJECT_SOURCE_DIR}/tests/example/check_${example}.cpp PROPERTIES
                                SKIP_UNITY_BUILD_INCLUSION ON COMPILE_DEFINITIONS main=tessera_check_${example}_main)
    list(APPEND _ex_sources ${_ex}/${example}.cpp ${_generated} ${PROJECT_SOURCE_DIR}/tests/example/check_${example}.cpp)
  endforeach()
  set_source_files_properties(${PROJECT_SOURCE_DIR}/tests/bundle/examples_main.cpp PROPERTIES
                              SKIP_UNITY_BUILD_INCLUSION ON)
  add_executable(tessera_examples ${_ex_sources})
  target_include_directories(tessera_examples PRIVATE ${_ex})
  # Each example's placements in one translation unit (as the merged build of
  # examples/CMakeLists.txt does on small machines).
  set_target_properties(tessera_examples PROPERTIES UNITY_BUILD ON UNITY_BUILD_MODE GROUP)
  target_link_libraries(tessera_examples PRIVATE tessera::cuda tessera_warnings)

  add_custom_target(tessera_bundle DEPENDS tessera_cuda_tests tessera_examples tessera_bench_cuda
                                           test_cuda_dtype_compat tessera_cuda_kernels)
endfunction()
