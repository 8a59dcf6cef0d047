# Driver for one compile-fail or compile-ok test, run as
#   cmake -DCOMPILER=... -DCOMPILER_KIND=gcc|clang|nvcc -DSETTINGS=<file>
#         -DSOURCE=<case file> -DCASE=<name> -DMODE=fail|ok [-DTEST_NAME=<ctest name>]
#         -P check_case.cmake
#
# It runs, with -DTESSERA_CASE_<name> [-DTESSERA_EXPECT_FAIL] and the include
# directories and definitions of tessera::tessera,
#   gcc, clang: COMPILER <flags> -fsyntax-only ... SOURCE
#   nvcc:       COMPILER -std=c++20 -x cu ... -c SOURCE -o /dev/null
# in the C locale (untranslated, ASCII-quoted diagnostics).
#   MODE=fail: the compiler must fail AND its output must match every
#              `// expect:` regex of the case plus the `// expect-gcc:`,
#              `// expect-clang:` or `// expect-nvcc:` ones of COMPILER_KIND
#              (at least one regex must apply to it), AND the output (stdout
#              and stderr together) must be at most TESSERA_CF_MAX_LINES lines.
#              A failure for any other reason (a typo, a missing header) does
#              not pass.
#   MODE=ok:   the same command without TESSERA_EXPECT_FAIL must succeed.
#              Only for cases marked `// compile-ok: alone`: the other twins are
#              compiled a case file at a time by check_batch.cmake.
# On any mismatch it prints the command and the whole compiler output.
#
# The command is built and run by cases.cmake (shared with check_batch.cmake).
# SETTINGS is written at generate time by tests/compile_fail/CMakeLists.txt and
# sets TESSERA_CF_FLAGS_<kind>, TESSERA_CF_INCLUDE_DIRS, TESSERA_CF_DEFINITIONS
# and TESSERA_CF_MAX_LINES (-DMAX_LINES=... on this command line overrides it).
cmake_minimum_required(VERSION 3.24)

include("${CMAKE_CURRENT_LIST_DIR}/cases.cmake")
tessera_cf_require_vars(check_case.cmake COMPILER COMPILER_KIND SETTINGS SOURCE CASE MODE)
if(NOT MODE MATCHES "^(fail|ok)$")
  message(FATAL_ERROR "check_case.cmake: MODE must be fail or ok (got '${MODE}')")
endif()
if(NOT COMPILER_KIND MATCHES "^(gcc|clang|nvcc)$")
  message(FATAL_ERROR "check_case.cmake: COMPILER_KIND must be gcc, clang or nvcc (got '${COMPILER_KIND}')")
endif()
include("${SETTINGS}")
if(NOT DEFINED MAX_LINES)
  set(MAX_LINES "${TESSERA_CF_MAX_LINES}")
endif()
if(NOT MAX_LINES MATCHES "^[0-9]+$")
  set(MAX_LINES 40)
endif()
if(NOT DEFINED TEST_NAME OR TEST_NAME STREQUAL "")
  set(TEST_NAME "compile_${MODE}.${COMPILER_KIND}.${CASE}")
endif()

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
  elseif(in_case AND line MATCHES "^//[ \t]*expect(-gcc|-clang|-nvcc)?:[ \t]*(.*)$")
    set(scope "${CMAKE_MATCH_1}")
    string(STRIP "${CMAKE_MATCH_2}" re)
    if(re STREQUAL "")
      message(FATAL_ERROR "${SOURCE}: case ${CASE} has an empty expect line")
    endif()
    if(scope STREQUAL "" OR scope STREQUAL "-${COMPILER_KIND}")
      set(expect_${n_expect} "${re}")
      math(EXPR n_expect "${n_expect} + 1")
    endif()
  endif()
endwhile()
if(NOT found_case)
  message(FATAL_ERROR "${SOURCE} has no block `#if defined(TESSERA_CASE_${CASE})`")
endif()
if(MODE STREQUAL "fail" AND n_expect EQUAL 0)
  message(FATAL_ERROR "${TEST_NAME}: case ${CASE} in ${SOURCE} has no regex for ${COMPILER_KIND}: "
                      "a compile-fail case must say which diagnostic it expects under every compiler "
                      "(an `// expect:` line, or `// expect-${COMPILER_KIND}:`)")
endif()

# ---- compile -----------------------------------------------------------------
tessera_cf_base_command(cmd)
list(APPEND cmd "-DTESSERA_CASE_${CASE}")
if(MODE STREQUAL "fail")
  list(APPEND cmd -DTESSERA_EXPECT_FAIL)
endif()
if(COMPILER_KIND STREQUAL "nvcc")
  # No syntax-only mode: compile, and throw the object away.
  list(APPEND cmd -c "${SOURCE}" -o /dev/null)
else()
  list(APPEND cmd "${SOURCE}")
endif()
tessera_cf_run(cmd rc out)
list(JOIN cmd " " cmd_text)

# Prints `reason`, the command and the compiler output verbatim (message()
# without a mode does not re-wrap text), then fails the test.
macro(report_failure)
  message("${reason}\ncommand: ${cmd_text}\n---- compiler output ----\n${out}---- end of compiler output ----")
  message(FATAL_ERROR "${TEST_NAME}: see above")
endmacro()

if(MODE STREQUAL "ok")
  if(NOT rc STREQUAL "0")
    set(reason "${TEST_NAME}: the correct twin of this case must compile, but the compiler returned ${rc}.")
    report_failure()
  endif()
  message(STATUS "${TEST_NAME}: compiles, as it must")
  return()
endif()

if(rc STREQUAL "0")
  set(reason "${TEST_NAME}: the misuse compiled, but it must be rejected.")
  report_failure()
endif()
if(NOT rc MATCHES "^[0-9]+$")
  set(reason "${TEST_NAME}: could not run the compiler (${rc}).")
  report_failure()
endif()
set(missing "")
math(EXPR last "${n_expect} - 1")
foreach(i RANGE 0 ${last})
  if(NOT out MATCHES "${expect_${i}}")
    string(APPEND missing "  ${expect_${i}}\n")
  endif()
endforeach()
# Lines of output: newlines, plus an unterminated last line.
string(LENGTH "${out}" out_chars)
string(REPLACE "\n" "" out_joined "${out}")
string(LENGTH "${out_joined}" out_joined_chars)
math(EXPR n_lines "${out_chars} - ${out_joined_chars}")
if(NOT out STREQUAL "" AND NOT out MATCHES "\n$")
  math(EXPR n_lines "${n_lines} + 1")
endif()
set(reason "")
if(NOT missing STREQUAL "")
  string(APPEND reason "${TEST_NAME}: the compiler rejected the code (exit ${rc}), but not with "
         "the expected diagnostic. Not found in its output:\n${missing}")
endif()
if(n_lines GREATER MAX_LINES)
  string(APPEND reason "${TEST_NAME}: the compiler output has ${n_lines} lines, more than the "
         "${MAX_LINES} allowed (TESSERA_CF_MAX_LINES): the diagnostic must stay short enough to read.\n")
endif()
if(NOT reason STREQUAL "")
  report_failure()
endif()
message(STATUS "${TEST_NAME}: rejected with the expected diagnostic (${n_expect} regexes matched, "
               "${n_lines} lines of output)")
