# Dependencies of tessera::tessera itself. Each is found on the system first;
# the message names the Debian package when one is missing.
find_package(Threads REQUIRED)
find_package(OpenMP COMPONENTS CXX)

# nlohmann/json parses safetensors headers and config files (io/).
find_package(nlohmann_json 3.10 QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "tessera needs nlohmann_json >= 3.10 and did not find it. "
                      "On Debian/Ubuntu: apt-get install nlohmann-json3-dev")
endif()

# OpenBLAS: its CMake package (Debian ships one), then pkg-config.
# With OpenMP, prefer Debian's OpenMP build of OpenBLAS: the pthread build
# keeps its own thread pool, and its threads and idle-spinning OpenMP threads
# from tessera's loops take each other's cores (a GEMM right after a parallel
# loop measured 13x slower). Sharing libgomp's pool avoids that.
if(NOT TARGET tessera::openblas)
  set(_tessera_openblas_omp_dir /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp/cmake/openblas)
  if(TARGET OpenMP::OpenMP_CXX AND CMAKE_LIBRARY_ARCHITECTURE AND EXISTS ${_tessera_openblas_omp_dir})
    # A build tree configured before the OpenMP build was installed caches
    # the other one; look again.
    if(OpenBLAS_DIR AND NOT OpenBLAS_DIR MATCHES "openblas-openmp")
      unset(OpenBLAS_DIR CACHE)
    endif()
    find_package(OpenBLAS CONFIG QUIET NO_DEFAULT_PATH PATHS ${_tessera_openblas_omp_dir})
  endif()
  if(NOT OpenBLAS_FOUND)
    find_package(OpenBLAS CONFIG QUIET)
  endif()
  if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
    add_library(tessera::openblas INTERFACE IMPORTED)
    set_target_properties(tessera::openblas PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${OpenBLAS_INCLUDE_DIRS}"
      INTERFACE_LINK_LIBRARIES "${OpenBLAS_LIBRARIES}")
  else()
    find_package(PkgConfig QUIET)
    if(PkgConfig_FOUND)
      pkg_check_modules(TESSERA_OPENBLAS IMPORTED_TARGET openblas)
    endif()
    if(TARGET PkgConfig::TESSERA_OPENBLAS)
      add_library(tessera::openblas INTERFACE IMPORTED)
      set_target_properties(tessera::openblas PROPERTIES
        INTERFACE_LINK_LIBRARIES PkgConfig::TESSERA_OPENBLAS)
    else()
      message(FATAL_ERROR "tessera needs OpenBLAS (cblas_sgemm) and did not find it. "
                          "On Debian/Ubuntu: apt-get install libopenblas-openmp-dev")
    endif()
  endif()
endif()

if(OpenBLAS_LIBRARIES)
  message(STATUS "tessera: OpenBLAS ${OpenBLAS_LIBRARIES}")
  if(TARGET OpenMP::OpenMP_CXX AND NOT OpenBLAS_LIBRARIES MATCHES "openmp")
    message(WARNING "tessera: OpenBLAS is not the OpenMP build; with OpenMP loops in tessera the two "
                    "thread pools compete for cores. On Debian/Ubuntu: apt-get install libopenblas-openmp-dev")
  endif()
endif()

# PCRE2 (8-bit) runs the tokenizer's pre-tokenizer regexes, utf8proc its
# Unicode normalization (tokenizer/). Their CMake packages first (newer
# releases ship one), then pkg-config (what Debian 12 ships).
find_package(PkgConfig QUIET)
if(NOT TARGET tessera::pcre2)
  find_package(PCRE2 CONFIG QUIET COMPONENTS 8BIT)
  if(TARGET PCRE2::8BIT)
    add_library(tessera::pcre2 INTERFACE IMPORTED)
    set_target_properties(tessera::pcre2 PROPERTIES INTERFACE_LINK_LIBRARIES PCRE2::8BIT)
  else()
    if(PkgConfig_FOUND)
      pkg_check_modules(TESSERA_PCRE2 QUIET IMPORTED_TARGET libpcre2-8)
    endif()
    if(NOT TARGET PkgConfig::TESSERA_PCRE2)
      message(FATAL_ERROR "tessera needs PCRE2 (libpcre2-8, for the tokenizer) and did not find it. "
                          "On Debian/Ubuntu: apt-get install libpcre2-dev")
    endif()
    add_library(tessera::pcre2 INTERFACE IMPORTED)
    set_target_properties(tessera::pcre2 PROPERTIES INTERFACE_LINK_LIBRARIES PkgConfig::TESSERA_PCRE2)
  endif()
endif()
if(NOT TARGET tessera::utf8proc)
  find_package(utf8proc CONFIG QUIET)
  if(TARGET utf8proc::utf8proc)
    add_library(tessera::utf8proc INTERFACE IMPORTED)
    set_target_properties(tessera::utf8proc PROPERTIES INTERFACE_LINK_LIBRARIES utf8proc::utf8proc)
  else()
    if(PkgConfig_FOUND)
      pkg_check_modules(TESSERA_UTF8PROC QUIET IMPORTED_TARGET libutf8proc)
    endif()
    if(NOT TARGET PkgConfig::TESSERA_UTF8PROC)
      message(FATAL_ERROR "tessera needs utf8proc (for the tokenizer's Unicode normalization) and did not "
                          "find it. On Debian/Ubuntu: apt-get install libutf8proc-dev")
    endif()
    add_library(tessera::utf8proc INTERFACE IMPORTED)
    set_target_properties(tessera::utf8proc PROPERTIES INTERFACE_LINK_LIBRARIES PkgConfig::TESSERA_UTF8PROC)
  endif()
endif()

# stb_image (PNG, BMP and GIF decoding) is vendored in include/tessera/third_party:
# Debian 12's libstb-dev (2.27) has decoder bugs fixed upstream since.

# libjpeg-turbo decodes JPEG files (io/image.hpp) with Pillow's settings, so
# the pixels equal Pillow's; CMake's FindJPEG finds it (Debian ships no CMake
# package, only the library and headers). io/image.hpp refuses a libjpeg
# that is not libjpeg-turbo at compile time.
if(NOT TARGET JPEG::JPEG)
  find_package(JPEG QUIET)
  if(NOT TARGET JPEG::JPEG)
    message(FATAL_ERROR "tessera needs libjpeg-turbo (JPEG decoding, io/image.hpp) and did not find it. "
                        "On Debian/Ubuntu: apt-get install libjpeg62-turbo-dev")
  endif()
endif()

# libsentencepiece reads sentencepiece tokenizer.model files (InternLM2, so
# InternVL2-2B/8B/26B; tokenizer/sentencepiece.hpp). Optional (TESSERA_SENTENCEPIECE
# AUTO, ON or OFF): pkg-config first (what Debian ships), then a plain search.
# Without it tessera builds, and loading a tokenizer.model throws a
# FormatError saying tessera was built without sentencepiece.
set(TESSERA_SENTENCEPIECE "AUTO" CACHE STRING
    "Read sentencepiece tokenizer.model files with libsentencepiece: AUTO (when found), ON or OFF")
set_property(CACHE TESSERA_SENTENCEPIECE PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${TESSERA_SENTENCEPIECE}" _tessera_sp)
if(NOT _tessera_sp MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "TESSERA_SENTENCEPIECE must be AUTO, ON or OFF (got '${TESSERA_SENTENCEPIECE}')")
endif()
if(NOT TARGET tessera::sentencepiece AND NOT _tessera_sp STREQUAL "OFF")
  if(PkgConfig_FOUND)
    pkg_check_modules(TESSERA_SENTENCEPIECE_PC QUIET sentencepiece)
  endif()
  find_path(TESSERA_SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h HINTS ${TESSERA_SENTENCEPIECE_PC_INCLUDE_DIRS})
  find_library(TESSERA_SENTENCEPIECE_LIBRARY sentencepiece HINTS ${TESSERA_SENTENCEPIECE_PC_LIBRARY_DIRS})
  if(TESSERA_SENTENCEPIECE_INCLUDE_DIR AND TESSERA_SENTENCEPIECE_LIBRARY)
    # Only the runtime library: pkg-config's Libs also name the trainer.
    add_library(tessera::sentencepiece INTERFACE IMPORTED)
    set_target_properties(tessera::sentencepiece PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${TESSERA_SENTENCEPIECE_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${TESSERA_SENTENCEPIECE_LIBRARY}"
      INTERFACE_COMPILE_DEFINITIONS TESSERA_HAS_SENTENCEPIECE=1)
  elseif(_tessera_sp STREQUAL "ON")
    message(FATAL_ERROR "TESSERA_SENTENCEPIECE=ON but sentencepiece_processor.h or libsentencepiece was not "
                        "found: install it (Debian: apt-get install libsentencepiece-dev), or configure with "
                        "-DTESSERA_SENTENCEPIECE=AUTO or OFF")
  endif()
endif()
if(TARGET tessera::sentencepiece)
  message(STATUS "tessera: sentencepiece ON (${TESSERA_SENTENCEPIECE_LIBRARY})")
else()
  message(STATUS "tessera: sentencepiece OFF (TESSERA_SENTENCEPIECE=${TESSERA_SENTENCEPIECE}): tokenizer.model "
                 "files cannot be read (loading one throws FormatError); install libsentencepiece-dev "
                 "(Debian/Ubuntu) and reconfigure to enable it")
endif()
