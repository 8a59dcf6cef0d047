# ---- CUDA architectures --------------------------------------------------------
# The GPUs tessera's users run: T4 (75), A100 (80), RTX 3090/A10 (86),
# RTX 4090/L4 (89), H100/H200 (90), B200 (100), RTX 50xx/RTX PRO (120).
# Unless CMAKE_CUDA_ARCHITECTURES (or the CUDAARCHS environment variable)
# says otherwise, the kernels are built as SASS for each of these that the
# found nvcc supports, plus PTX for the newest, so later GPUs can JIT them.
set(TESSERA_CUDA_DEFAULT_ARCHS 75 80 86 89 90 100 120)

# TESSERA_NVCC_VERSION (e.g. 13.0) and TESSERA_NVCC_ARCHS (the compute_NN
# numbers `nvcc --list-gpu-arch` prints) of CMAKE_CUDA_COMPILER, known before
# enable_language(CUDA).
function(tessera_nvcc_facts)
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --version OUTPUT_VARIABLE out ERROR_QUIET)
  string(REGEX MATCH "release ([0-9]+\\.[0-9]+)" _ "${out}")
  set(TESSERA_NVCC_VERSION "${CMAKE_MATCH_1}" PARENT_SCOPE)
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-arch OUTPUT_VARIABLE out ERROR_QUIET
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "'${CMAKE_CUDA_COMPILER} --list-gpu-arch' failed (${rc}): tessera needs CUDA 11.5 or newer")
  endif()
  string(REGEX MATCHALL "compute_[0-9]+" found "${out}")
  list(TRANSFORM found REPLACE "compute_" "")
  set(TESSERA_NVCC_ARCHS ${found} PARENT_SCOPE)
endfunction()

# Fails, naming the fix, when a requested architecture (a CMake entry such as
# 70, 90a or 80-real) is one this nvcc cannot build: sm_70/72 (Volta: V100,
# Jetson Xavier) are gone from CUDA 13, and their users need a CUDA 12 toolkit.
function(tessera_check_cuda_architectures requested)
  foreach(entry IN LISTS requested)
    if(NOT entry MATCHES "^([0-9]+)a?(-real|-virtual)?$")
      continue()
    endif()
    set(arch "${CMAKE_MATCH_1}")
    if(arch IN_LIST TESSERA_NVCC_ARCHS)
      continue()
    endif()
    if(arch MATCHES "^7[02]$")
      if(arch STREQUAL "70")
        set(gpu "V100")
      else()
        set(gpu "Jetson Xavier")
      endif()
      message(FATAL_ERROR "CMAKE_CUDA_ARCHITECTURES=${requested} asks for sm_${arch}: ${gpu} (sm_${arch}) is not "
                          "supported by CUDA 13 or newer, and the CUDA found is ${TESSERA_NVCC_VERSION} "
                          "(${CMAKE_CUDA_COMPILER}). Build for ${gpu} with a CUDA 12 toolkit in a fresh build "
                          "directory (e.g. -DCMAKE_CUDA_COMPILER=/usr/local/cuda-12.9/bin/nvcc), or leave ${arch} "
                          "out of CMAKE_CUDA_ARCHITECTURES")
    endif()
    string(REPLACE ";" " " supported "${TESSERA_NVCC_ARCHS}")
    message(FATAL_ERROR "CMAKE_CUDA_ARCHITECTURES=${requested} asks for sm_${arch}, which CUDA "
                        "${TESSERA_NVCC_VERSION} (${CMAKE_CUDA_COMPILER}) does not support; it supports ${supported}")
  endforeach()
endfunction()

# Sets CMAKE_CUDA_ARCHITECTURES (when the user did not), checks it, and
# records in TESSERA_CUDA_ARCHITECTURES_SOURCE where it came from.
# TESSERA_CUDA_CHECK_ARCHS is the default list this nvcc supports, which the
# compile-only CTests cover whatever the build itself targets.
macro(tessera_cuda_architectures)
  tessera_nvcc_facts()
  set(TESSERA_CUDA_CHECK_ARCHS "")
  foreach(arch IN LISTS TESSERA_CUDA_DEFAULT_ARCHS)
    if(arch IN_LIST TESSERA_NVCC_ARCHS)
      list(APPEND TESSERA_CUDA_CHECK_ARCHS ${arch})
    endif()
  endforeach()
  if(NOT TESSERA_CUDA_CHECK_ARCHS)
    message(FATAL_ERROR "CUDA ${TESSERA_NVCC_VERSION} (${CMAKE_CUDA_COMPILER}) supports none of the "
                        "architectures tessera targets (${TESSERA_CUDA_DEFAULT_ARCHS})")
  endif()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND DEFINED ENV{CUDAARCHS})
    set(CMAKE_CUDA_ARCHITECTURES "$ENV{CUDAARCHS}")
  endif()
  if(DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(TESSERA_CUDA_ARCHITECTURES_SOURCE "as requested")
    tessera_check_cuda_architectures("${CMAKE_CUDA_ARCHITECTURES}")  # native, all, all-major pass through
  else()
    set(TESSERA_CUDA_ARCHITECTURES_SOURCE "tessera's default for this nvcc; narrow with -DCMAKE_CUDA_ARCHITECTURES=90")
    # e.g. 75-real;...;100-real;120: plain 120 is SASS and PTX.
    list(TRANSFORM TESSERA_CUDA_CHECK_ARCHS APPEND "-real" OUTPUT_VARIABLE CMAKE_CUDA_ARCHITECTURES)
    list(POP_BACK CMAKE_CUDA_ARCHITECTURES)
    list(GET TESSERA_CUDA_CHECK_ARCHS -1 _tessera_newest)
    list(APPEND CMAKE_CUDA_ARCHITECTURES ${_tessera_newest})
  endif()
endmacro()

# TESSERA_CUDA=AUTO|ON|OFF -> TESSERA_WITH_CUDA. AUTO enables CUDA when
# check_language(CUDA) finds nvcc; ON fails loudly when it does not.
string(TOUPPER "${TESSERA_CUDA}" _tessera_cuda)
set(TESSERA_WITH_CUDA OFF)
if(NOT _tessera_cuda MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "TESSERA_CUDA must be AUTO, ON or OFF (got '${TESSERA_CUDA}')")
endif()
if(NOT _tessera_cuda STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Decided before enable_language(CUDA), which would otherwise pick
    # nvcc's own default (one architecture).
    tessera_cuda_architectures()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(TESSERA_WITH_CUDA ON)
  elseif(_tessera_cuda STREQUAL "ON")
    message(FATAL_ERROR "TESSERA_CUDA=ON but no CUDA compiler was found: install the CUDA toolkit "
                        "(nvcc on PATH or CMAKE_CUDA_COMPILER set), or configure with -DTESSERA_CUDA=OFF")
  endif()
endif()
if(TESSERA_WITH_CUDA)
  message(STATUS "tessera: CUDA ON (TESSERA_CUDA=${TESSERA_CUDA}; nvcc ${TESSERA_NVCC_VERSION}; "
                 "CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES}, ${TESSERA_CUDA_ARCHITECTURES_SOURCE})")
else()
  message(STATUS "tessera: CUDA OFF (TESSERA_CUDA=${TESSERA_CUDA})")
endif()
