# Dependencies of tessera::tessera itself. Each is found on the system first;
# the message names the Debian package when one is missing.
find_package(Threads REQUIRED)
find_package(OpenMP COMPONENTS CXX)

# OpenBLAS: its CMake package (Debian ships one), then pkg-config.
if(NOT TARGET tessera::openblas)
  find_package(OpenBLAS CONFIG QUIET)
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
                          "On Debian/Ubuntu: apt-get install libopenblas-dev")
    endif()
  endif()
endif()
