# Driver for one compile-fail or compile-ok test, run as
#   cmake -DCOMPILER=... -DCOMPILER_ID=GNU|Clang -DSETTINGS=<file> -DSOURCE=<case file>
#         -DCASE=<name> -DMODE=fail|ok -P check_case.cmake
#
# It runs `COMPILER <flags> -fsyntax-only -DTESSERA_CASE_<name> [-DTESSERA_EXPECT_FAIL] SOURCE`.
#   MODE=fail: the compiler must fail AND its output must match every
#              `// expect:` regex of the case (plus `// expect-gcc:` under GCC,
#              `// expect-clang:` under Clang). A failure for any other reason
#              (a typo, a missing header) does not pass.
#   MODE=ok:   the same command without TESSERA_EXPECT_FAIL must succeed.
# On any mismatch it prints the command and the whole compiler output.
#
# SETTINGS is written at generate time by tests/compile_fail/CMakeLists.txt and
# sets TESSERA_CF_FLAGS, TESSERA_CF_INCLUDE_DIRS and TESSERA_CF_DEFINITIONS.
cmake_minimum_required(VERSION 3.24)

foreach(var IN ITEMS COMPILER COMPILER_ID SETTINGS SOURCE CASE MODE)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_case.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT MODE MATCHES "^(fail|ok)$")
  message(FATAL_ERROR "check_case.cmake: MODE must be fail or ok (got '${MODE}')")
endif()
include("${SETTINGS}")

# ---- the case's expectations, read from its source block --------------------
# The file is walked line by line with string(FIND) rather than file(STRINGS),
# so that regexes may contain ';', '[' and ']' (which CMake lists mangle).
# Expectations are kept in numbered variables for the same reason.
file(READ "${SOURCE}" text)
set(in_case FALSE)
set(found_case FALSE)
set(n_expect 0)
while(NOT text STREQUAL "")
  string(FIND "${text}" "\n" eol)
  if(eol EQUAL -1)
    set(line "${text}")
    set(text "")
  else()
    string(SUBSTRING "${text}" 0 ${eol} line)
    math(EXPR next "${eol} + 1")
    string(SUBSTRING "${text}" ${next} -1 text)
  endif()
  if(line MATCHES "^#[ \t]*(el)?if[ \t]+defined[ \t]*\\([ \t]*TESSERA_CASE_([A-Za-z0-9_]+)[ \t]*\\)")
    if(CMAKE_MATCH_2 STREQUAL CASE)
      set(in_case TRUE)
      set(found_case TRUE)
    else()
      set(in_case FALSE)
    endif()
  elseif(in_case AND line MATCHES "^//[ \t]*expect(-gcc|-clang)?:[ \t]*(.*)$")
    set(scope "${CMAKE_MATCH_1}")
    string(STRIP "${CMAKE_MATCH_2}" re)
    if(re STREQUAL "")
      message(FATAL_ERROR "${SOURCE}: case ${CASE} has an empty expect line")
    endif()
    if(scope STREQUAL ""
       OR (scope STREQUAL "-gcc" AND COMPILER_ID STREQUAL "GNU")
       OR (scope STREQUAL "-clang" AND COMPILER_ID MATCHES "Clang"))
      set(expect_${n_expect} "${re}")
      math(EXPR n_expect "${n_expect} + 1")
    endif()
  endif()
endwhile()
if(NOT found_case)
  message(FATAL_ERROR "${SOURCE} has no block `#if defined(TESSERA_CASE_${CASE})`")
endif()
if(MODE STREQUAL "fail" AND n_expect EQUAL 0)
  message(FATAL_ERROR "case ${CASE} in ${SOURCE} has no `// expect:` regex for ${COMPILER_ID}: "
                      "a compile-fail case must say which diagnostic it expects")
endif()

# ---- compile -----------------------------------------------------------------
set(cmd "${COMPILER}" ${TESSERA_CF_FLAGS} -fsyntax-only)
foreach(dir IN LISTS TESSERA_CF_INCLUDE_DIRS)
  list(APPEND cmd "-I${dir}")
endforeach()
foreach(def IN LISTS TESSERA_CF_DEFINITIONS)
  list(APPEND cmd "-D${def}")
endforeach()
list(APPEND cmd "-DTESSERA_CASE_${CASE}")
if(MODE STREQUAL "fail")
  list(APPEND cmd -DTESSERA_EXPECT_FAIL)
endif()
list(APPEND cmd "${SOURCE}")

# The C locale keeps diagnostics untranslated and ASCII-quoted.
execute_process(COMMAND "${CMAKE_COMMAND}" -E env LC_ALL=C LANG=C LANGUAGE= ${cmd}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
list(JOIN cmd " " cmd_text)

# Prints `reason`, the command and the compiler output verbatim (message()
# without a mode does not re-wrap text), then fails the test.
macro(report_failure)
  message("${reason}\ncommand: ${cmd_text}\n---- compiler output ----\n${out}---- end of compiler output ----")
  message(FATAL_ERROR "${CASE}: see above")
endmacro()

if(MODE STREQUAL "ok")
  if(NOT rc STREQUAL "0")
    set(reason "compile_ok.${CASE}: the correct twin of this case must compile, but the compiler returned ${rc}.")
    report_failure()
  endif()
  message(STATUS "compile_ok.${CASE}: compiles, as it must")
  return()
endif()

if(rc STREQUAL "0")
  set(reason "compile_fail.${CASE}: the misuse compiled, but it must be rejected.")
  report_failure()
endif()
if(NOT rc MATCHES "^[0-9]+$")
  set(reason "compile_fail.${CASE}: could not run the compiler (${rc}).")
  report_failure()
endif()
set(missing "")
math(EXPR last "${n_expect} - 1")
foreach(i RANGE 0 ${last})
  if(NOT out MATCHES "${expect_${i}}")
    string(APPEND missing "  ${expect_${i}}\n")
  endif()
endforeach()
if(NOT missing STREQUAL "")
  string(CONCAT reason "compile_fail.${CASE}: the compiler rejected the code (exit ${rc}), but not with "
         "the expected diagnostic. Not found in its output:\n${missing}")
  report_failure()
endif()
message(STATUS "compile_fail.${CASE}: rejected with the expected diagnostic (${n_expect} regexes matched)")
