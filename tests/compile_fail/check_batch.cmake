# Driver for one batched compile-ok test: every twin of one case file, under
# one compiler, in one front-end run. Run as
#   cmake -DCOMPILER=... -DCOMPILER_KIND=gcc|clang -DSETTINGS=<file>
#         -DSOURCE=<case file> -DWRAPPER=<generated wrapper> [-DALONE=<a,b,...>]
#         [-DTEST_NAME=<ctest name>] -P check_batch.cmake
#
# WRAPPER is written by CMakeLists.txt at configure time:
#   #define TESSERA_CASE_NONE / #include "SOURCE" / #undef ...   (the headers)
#   namespace tessera_cf_<case> {
#   #define TESSERA_CASE_<case> / #include "SOURCE" / #undef ...
#   }                                                           (one per case)
# and this script compiles it with COMPILER <flags> -fsyntax-only. ALONE names
# the cases marked `// compile-ok: alone`, left out of WRAPPER and checked by
# their own compile_ok.<case> tests.
#
# Guard: before compiling, the case list of SOURCE is read again (cases.cmake,
# the same reading the compile_fail.* tests are registered from); it must be
# WRAPPER's cases plus ALONE, so no twin is left out of the batch (a case added
# to SOURCE after configure fails here until cmake is re-run).
#
# On failure the batch does not say which case broke, so each batched case's
# twin is compiled alone (COMPILER ... -DTESSERA_CASE_<case> SOURCE): the ones
# that fail are named with their first error line; if none does, the failure
# comes from batching itself (two cases' declarations clash, or a case cannot
# live in a namespace), and the cases whose lines the errors cite are named:
# mark such a case `// compile-ok: alone`. Then the
# command and the whole output of the batched run are printed.
cmake_minimum_required(VERSION 3.24)

include("${CMAKE_CURRENT_LIST_DIR}/cases.cmake")
tessera_cf_require_vars(check_batch.cmake COMPILER COMPILER_KIND SETTINGS SOURCE WRAPPER)
if(NOT COMPILER_KIND MATCHES "^(gcc|clang)$")
  message(FATAL_ERROR "check_batch.cmake: COMPILER_KIND must be gcc or clang (got '${COMPILER_KIND}')")
endif()
if(NOT DEFINED TEST_NAME OR TEST_NAME STREQUAL "")
  get_filename_component(stem "${SOURCE}" NAME_WE)
  set(TEST_NAME "compile_ok.${COMPILER_KIND}.${stem}")
endif()
include("${SETTINGS}")

# ---- guard: the batch holds every case of SOURCE --------------------------------
tessera_cf_read_cases("${SOURCE}" cases alone_now)
tessera_cf_batched_cases("${WRAPPER}" batched)
string(REPLACE "," ";" alone "${ALONE}")
set(expected "${cases}")
if(alone)
  list(REMOVE_ITEM expected ${alone})
endif()
if(NOT "${batched}" STREQUAL "${expected}" OR NOT "${alone}" STREQUAL "${alone_now}")
  list(JOIN cases " " cases_text)
  list(JOIN batched " " batched_text)
  list(JOIN alone " " alone_text)
  list(JOIN alone_now " " alone_now_text)
  message(FATAL_ERROR "${TEST_NAME}: the batch does not hold exactly the cases of ${SOURCE} "
                      "(re-run cmake after adding, removing or marking a case).\n"
                      "  cases in the file:      ${cases_text}\n"
                      "  marked alone now:       ${alone_now_text}\n"
                      "  batched (${WRAPPER}): ${batched_text}\n"
                      "  alone at configure:     ${alone_text}")
endif()
list(LENGTH batched n_batched)

# ---- the batched compile ----------------------------------------------------------
tessera_cf_base_command(base)
set(cmd ${base} "${WRAPPER}")
tessera_cf_run(cmd rc out)
list(JOIN cmd " " cmd_text)
if(rc STREQUAL "0")
  message(STATUS "${TEST_NAME}: the ${n_batched} twins of ${SOURCE} compile, as they must")
  return()
endif()

# ---- which twins fail: each one alone ----------------------------------------------
set(failing "")
set(summary "")
foreach(case IN LISTS batched)
  set(one ${base} "-DTESSERA_CASE_${case}" "${SOURCE}")
  tessera_cf_run(one one_rc one_out)
  if(NOT one_rc STREQUAL "0")
    list(APPEND failing "${case}")
    tessera_cf_first_error("${one_out}" first)
    string(APPEND summary "  ${case}: ${first}\n")
  endif()
endforeach()
if(failing)
  list(LENGTH failing n_failing)
  string(CONCAT reason "${TEST_NAME}: ${n_failing} of the ${n_batched} correct twins of ${SOURCE} do not compile "
             "(compiler returned ${rc}); each fails alone too (-DTESSERA_CASE_<case>), first error:\n${summary}")
else()
  tessera_cf_first_error("${out}" first)
  tessera_cf_cases_at_lines("${SOURCE}" "${out}" suspects)
  if(suspects)
    list(JOIN suspects " " suspects_text)
  else()
    set(suspects_text "(none: the errors cite no case block of the file)")
  endif()
  string(CONCAT reason "${TEST_NAME}: the batched twins of ${SOURCE} do not compile (compiler returned ${rc}), "
             "but each compiles alone: batching them is what fails (declarations of two cases clash, or "
             "a case cannot live in a namespace). Mark such a case `// compile-ok: alone` in its block.\n"
             "  cases the errors are in: ${suspects_text}\n"
             "  first error: ${first}\n")
endif()
message("${reason}command: ${cmd_text}\n---- compiler output ----\n${out}---- end of compiler output ----")
message(FATAL_ERROR "${TEST_NAME}: see above")
