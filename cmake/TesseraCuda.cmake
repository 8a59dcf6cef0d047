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
    # One architecture keeps nvcc fast on small machines; override as usual,
    # e.g. -DCMAKE_CUDA_ARCHITECTURES=80;90. 90 is Hopper (H100/H200).
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(TESSERA_WITH_CUDA ON)
  elseif(_tessera_cuda STREQUAL "ON")
    message(FATAL_ERROR "TESSERA_CUDA=ON but no CUDA compiler was found: install the CUDA toolkit "
                        "(nvcc on PATH or CMAKE_CUDA_COMPILER set), or configure with -DTESSERA_CUDA=OFF")
  endif()
endif()
message(STATUS "tessera: CUDA ${TESSERA_WITH_CUDA} (TESSERA_CUDA=${TESSERA_CUDA})")
