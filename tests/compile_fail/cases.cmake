# Helpers shared by tests/compile_fail/CMakeLists.txt (at configure time) and
# check_case.cmake / check_batch.cmake (at test time), so that the tests are
# registered from, and checked against, one reading of the case files.

# tessera_cf_read_cases(<case file> <cases var> <alone var>)
# The cases of a case file, in file order: one per line
#   #if defined(TESSERA_CASE_<name>)   or   #elif defined(TESSERA_CASE_<name>)
# except TESSERA_CASE_NONE (the headers-only block the batched twins include
# first). <alone var> gets the cases whose block holds a line that is exactly
#   // compile-ok: alone
# (the reason, if any, on the comment lines around it): their twins are not
# batched (see CMakeLists.txt) but compiled one per test, as the misuses are.
# Stops a -P script with "<script>: -D<VAR>=... is required" for the first of
# the named variables that is unset or empty.
function(tessera_cf_require_vars script)
  foreach(var IN LISTS ARGN)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
      message(FATAL_ERROR "${script}: -D${var}=... is required")
    endif()
  endforeach()
endfunction()

function(tessera_cf_read_cases file cases_var alone_var)
  # Only lines of these two shapes are read, so no ';' or '[' can mangle the list.
  file(STRINGS "${file}" lines
       REGEX "^(#[ \t]*(el)?if[ \t]+defined[ \t]*\\([ \t]*TESSERA_CASE_|//[ \t]*compile-ok:[ \t]*alone[ \t]*$)")
  set(cases "")
  set(alone "")
  set(current "")
  foreach(line IN LISTS lines)
    if(line MATCHES "^#[ \t]*(el)?if[ \t]+defined[ \t]*\\([ \t]*TESSERA_CASE_([A-Za-z0-9_]+)")
      set(current "${CMAKE_MATCH_2}")
      if(NOT current STREQUAL "NONE")
        list(APPEND cases "${current}")
      endif()
    elseif(line MATCHES "^//[ \t]*compile-ok:[ \t]*alone")
      if(current STREQUAL "" OR current STREQUAL "NONE")
        message(FATAL_ERROR "${file}: `// compile-ok: alone` outside a TESSERA_CASE_<name> block")
      endif()
      list(APPEND alone "${current}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES alone)
  set(${cases_var} "${cases}" PARENT_SCOPE)
  set(${alone_var} "${alone}" PARENT_SCOPE)
endfunction()

# tessera_cf_batched_cases(<wrapper file> <out var>)
# The cases a generated wrapper (CMakeLists.txt's batched twins) compiles, in
# its order: its `#define TESSERA_CASE_<name>` lines, less NONE.
function(tessera_cf_batched_cases wrapper out_var)
  file(STRINGS "${wrapper}" lines REGEX "^#define TESSERA_CASE_[A-Za-z0-9_]+$")
  set(out "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^#define TESSERA_CASE_" "" case "${line}")
    if(NOT case STREQUAL "NONE")
      list(APPEND out "${case}")
    endif()
  endforeach()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# tessera_cf_base_command(<out var>)
# The front-end command for COMPILER_KIND, up to (not including) the macro
# that selects a case and the source: COMPILER, TESSERA_CF_FLAGS_<kind>,
# -fsyntax-only (gcc/clang; nvcc has no such mode), and the include
# directories and definitions of tessera::tessera (all from SETTINGS, which
# the caller has included).
function(tessera_cf_base_command out_var)
  set(cmd "${COMPILER}" ${TESSERA_CF_FLAGS_${COMPILER_KIND}})
  if(NOT COMPILER_KIND STREQUAL "nvcc")
    list(APPEND cmd -fsyntax-only)
  endif()
  set(dirs ${TESSERA_CF_INCLUDE_DIRS})
  list(REMOVE_DUPLICATES dirs)
  foreach(dir IN LISTS dirs)
    list(APPEND cmd "-I${dir}")
  endforeach()
  foreach(def IN LISTS TESSERA_CF_DEFINITIONS)
    list(APPEND cmd "-D${def}")
  endforeach()
  set(${out_var} "${cmd}" PARENT_SCOPE)
endfunction()

# tessera_cf_run(<cmd list var> <rc var> <output var>)
# Runs the command in the C locale (untranslated, ASCII-quoted diagnostics),
# stdout and stderr together.
function(tessera_cf_run cmd_var rc_var out_var)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E env LC_ALL=C LANG=C LANGUAGE= ${${cmd_var}}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  set(${rc_var} "${rc}" PARENT_SCOPE)
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# tessera_cf_first_error(<output> <out var>)
# The first line of compiler output that reports an error (for a summary).
function(tessera_cf_first_error output out_var)
  set(first "")
  if(output MATCHES "([^\n]* (fatal )?error[: #][^\n]*)")
    set(first "${CMAKE_MATCH_1}")
  elseif(output MATCHES "([^\n]+)")
    set(first "${CMAKE_MATCH_1}")
  endif()
  set(${out_var} "${first}" PARENT_SCOPE)
endfunction()

# tessera_cf_cases_at_lines(<case file> <output> <out var>)
# The cases whose blocks hold a line of <case file> that <output> cites as
# `<case file>:<line>` (GCC/Clang), in file order: where a batched run's
# errors are, when every case compiles alone.
function(tessera_cf_cases_at_lines file output out_var)
  string(REGEX REPLACE "([][+.*?()^$|\\])" "\\\\\\1" file_re "${file}")
  string(REGEX MATCHALL "${file_re}:[0-9]+" cites "${output}")
  set(wanted "")
  foreach(cite IN LISTS cites)
    string(REGEX REPLACE ".*:" "" n "${cite}")
    list(APPEND wanted "${n}")
  endforeach()
  file(READ "${file}" text)
  # One list element per line (';' and brackets would mangle the list).
  string(REGEX REPLACE "[];[]" "_" text "${text}")
  string(REPLACE "\n" ";" lines "${text}")
  set(out "")
  set(current "")
  set(n 0)
  foreach(line IN LISTS lines)
    math(EXPR n "${n} + 1")
    if(line MATCHES "^#[ \t]*(el)?if[ \t]+defined[ \t]*\\([ \t]*TESSERA_CASE_([A-Za-z0-9_]+)")
      set(current "${CMAKE_MATCH_2}")
    endif()
    if(NOT current STREQUAL "" AND NOT current STREQUAL "NONE" AND n IN_LIST wanted)
      list(APPEND out "${current}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES out)
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()
