# Driver for one test of an example program (examples/CMakeLists.txt,
# example_test), run by CTest as
#   cmake -DEXE=<example> -DARGS=<a|b|c> [-DSEP=<separator>] -DEXPECT_RC=<n> [-DEXPECT_STDERR=<regex>]
#         [-DEXPECT_STDOUT=<regex>] [-DLAUNCHER=<mpiexec|-n|2|...>]
#         -DOUT=<prefix> [-DCHECK=<checker>|<arg>|<arg>...] -P run_example.cmake
#
# Runs EXE with ARGS (SEP, by default '|', separates them, since arguments
# hold spaces and CMake lists would split on ';'; arguments that hold '|',
# such as a chat template, need another SEP), stdout into OUT.stdout and
# stderr into OUT.stderr (kept for inspection). The exit code must be EXPECT_RC and
# stderr must match EXPECT_STDERR when given. Then, when CHECK is given, the
# checker runs with its arguments plus --stdout OUT.stdout --stderr OUT.stderr
# and must exit 0. On a failure both outputs are printed.
cmake_minimum_required(VERSION 3.24)

foreach(var IN ITEMS EXE ARGS EXPECT_RC OUT)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_example.cmake: -D${var}=... is required")
  endif()
endforeach()

if(NOT DEFINED SEP OR "${SEP}" STREQUAL "")
  set(SEP "|")
endif()
string(REPLACE "${SEP}" ";" args "${ARGS}")
# LAUNCHER (e.g. mpiexec and its flags, '|'-separated) runs EXE under it.
set(launcher "")
if(DEFINED LAUNCHER AND NOT "${LAUNCHER}" STREQUAL "")
  string(REPLACE "|" ";" launcher "${LAUNCHER}")
endif()
execute_process(COMMAND ${launcher} "${EXE}" ${args}
                OUTPUT_FILE "${OUT}.stdout" ERROR_FILE "${OUT}.stderr"
                RESULT_VARIABLE rc)
file(READ "${OUT}.stdout" out)
file(READ "${OUT}.stderr" err)

function(fail why)
  message(FATAL_ERROR "${why}\ncommand: ${EXE} ${args}\n---- stdout ----\n${out}\n---- stderr ----\n${err}")
endfunction()

if(NOT "${rc}" STREQUAL "${EXPECT_RC}")
  fail("exit code ${rc}, expected ${EXPECT_RC}")
endif()
if(DEFINED EXPECT_STDERR AND NOT "${EXPECT_STDERR}" STREQUAL "")
  if(NOT err MATCHES "${EXPECT_STDERR}")
    fail("stderr does not match the regex '${EXPECT_STDERR}'")
  endif()
endif()

if(DEFINED EXPECT_STDOUT AND NOT "${EXPECT_STDOUT}" STREQUAL "")
  if(NOT out MATCHES "${EXPECT_STDOUT}")
    fail("stdout does not match the regex '${EXPECT_STDOUT}'")
  endif()
endif()

if(DEFINED CHECK AND NOT "${CHECK}" STREQUAL "")
  string(REPLACE "|" ";" check "${CHECK}")
  execute_process(COMMAND ${check} --stdout "${OUT}.stdout" --stderr "${OUT}.stderr"
                  OUTPUT_VARIABLE check_out ERROR_VARIABLE check_out RESULT_VARIABLE check_rc)
  message("${check_out}")
  if(NOT check_rc EQUAL 0)
    fail("the checker failed (exit ${check_rc}):\n${check_out}")
  endif()
endif()
message("ok: exit code ${rc}")
