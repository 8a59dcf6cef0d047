# tests/layering/check_layering.cmake — the layer rules of docs/architecture.md
# (§ The layers), checked on the #include lines of the headers:
#
#   cmake -DTESSERA_LAYERING_ROOT=<dir holding core/, ops/, ...> -P check_layering.cmake
#
# Every `#include "..."` (resolved against the including file, or against the
# include directory when it is spelled "tessera/...") and `#include <tessera/...>`
# is mapped to the top-level directory it lands in; an include from one layer
# into a layer it must not use prints `file:line: <rule> (#include ...)` and the
# script fails. Includes of anything outside the tree (std, CUDA, nlohmann) are
# not checked, and neither is third_party/.
#
# The rules: a layer may include only itself and what is below it.
#   core/       is the bottom: nothing above it (the umbrella tessera.hpp includes ops/ and nn/)
#   ops/        not nn/, models/, placement/ (nor the umbrella)
#   comm/       not placement/, models/
#   placement/  not models/
cmake_minimum_required(VERSION 3.24)

set(forbidden_core ops nn io comm placement models generate tokenizer tessera.hpp)
set(forbidden_ops nn models placement tessera.hpp)
set(forbidden_comm placement models)
set(forbidden_placement models)
set(ruled_layers core ops comm placement)

# Known edges being removed: "including file -> included file", both relative
# to the root. Each is reported (as a note) instead of failing; delete a line
# once its edge is gone (the script then notes it as unused).
set(known_edges
)

if(NOT DEFINED TESSERA_LAYERING_ROOT OR NOT IS_DIRECTORY "${TESSERA_LAYERING_ROOT}")
  message(FATAL_ERROR "check_layering.cmake: pass -DTESSERA_LAYERING_ROOT=<include/tessera directory>")
endif()
set(root "${TESSERA_LAYERING_ROOT}")
# Paths are printed relative to the working directory (the source tree, as
# CTest runs it), so `include/tessera/core/cuda.hpp:34` opens in an editor.
set(shown_base "${CMAKE_CURRENT_SOURCE_DIR}")

file(GLOB_RECURSE headers RELATIVE "${root}" "${root}/*.hpp" "${root}/*.cuh" "${root}/*.h" "${root}/*.inl")
list(FILTER headers EXCLUDE REGEX "^third_party/")
list(SORT headers)

set(violations 0)
set(checked_includes 0)
set(checked_headers 0)
set(used_known_edges "")
foreach(rel IN LISTS headers)
  string(REGEX MATCH "^[^/]+" layer "${rel}")
  if(NOT layer IN_LIST ruled_layers)
    continue()
  endif()
  math(EXPR checked_headers "${checked_headers} + 1")
  get_filename_component(rel_dir "${rel}" DIRECTORY)
  file(RELATIVE_PATH shown "${shown_base}" "${root}/${rel}")

  # One list element per line: neutralise what CMake lists treat specially
  # (; separates, [ ] group, \ escapes) before splitting on newlines.
  file(READ "${root}/${rel}" text)
  string(REPLACE "\\" "/" text "${text}")
  string(REPLACE ";" "," text "${text}")
  string(REPLACE "[" "(" text "${text}")
  string(REPLACE "]" ")" text "${text}")
  string(REPLACE "\r" "" text "${text}")
  string(REPLACE "\n" ";" lines "${text}")

  set(line_no 0)
  foreach(line IN LISTS lines)
    math(EXPR line_no "${line_no} + 1")
    if(NOT line MATCHES "^[ \t]*#[ \t]*include[ \t]*([\"<])([^\">]+)[\">]")
      continue()
    endif()
    set(delim "${CMAKE_MATCH_1}")
    set(spelled "${CMAKE_MATCH_2}")
    if(delim STREQUAL "<")
      if(NOT spelled MATCHES "^tessera/(.+)$")
        continue()  # std, CUDA, third-party headers
      endif()
      set(target "${CMAKE_MATCH_1}")
    elseif(spelled MATCHES "^tessera/(.+)$" AND NOT EXISTS "${root}/${rel_dir}/${spelled}")
      set(target "${CMAKE_MATCH_1}")
    elseif(rel_dir STREQUAL "")
      set(target "${spelled}")
    else()
      set(target "${rel_dir}/${spelled}")
    endif()
    cmake_path(NORMAL_PATH target)
    if(target MATCHES "^\\.\\./")
      continue()  # outside the tree
    endif()
    math(EXPR checked_includes "${checked_includes} + 1")
    string(REGEX MATCH "^[^/]+" target_layer "${target}")
    if(NOT target_layer IN_LIST forbidden_${layer})
      continue()
    endif()
    if(target_layer MATCHES "\\.")
      set(what "${target_layer}")
    else()
      set(what "${target_layer}/")
    endif()
    if(delim STREQUAL "<")
      set(spelled "<${spelled}>")
    else()
      set(spelled "\"${spelled}\"")
    endif()
    set(edge "${rel} -> ${target}")
    if(edge IN_LIST known_edges)
      list(APPEND used_known_edges "${edge}")
      message(NOTICE "${shown}:${line_no}: note: ${layer}/ must not include ${what} (#include ${spelled}); "
                     "allowed for now, listed under known_edges in tests/layering/check_layering.cmake")
      continue()
    endif()
    math(EXPR violations "${violations} + 1")
    message(NOTICE "${shown}:${line_no}: error: ${layer}/ must not include ${what} (#include ${spelled})")
  endforeach()
endforeach()

foreach(edge IN LISTS known_edges)
  if(NOT edge IN_LIST used_known_edges)
    message(NOTICE "note: known edge '${edge}' no longer exists; delete it from known_edges in "
                   "tests/layering/check_layering.cmake")
  endif()
endforeach()

if(checked_includes EQUAL 0)
  message(FATAL_ERROR "layering: no includes between tessera headers found under ${root}; is the root right?")
endif()
if(violations GREATER 0)
  message(FATAL_ERROR "layering: ${violations} forbidden include(s) (rules: docs/architecture.md § The layers)")
endif()
string(JOIN "/, " ruled ${ruled_layers})
message(STATUS "layering: ${checked_includes} includes between tessera headers in ${checked_headers} headers of "
               "${ruled}/ checked, none forbidden")
