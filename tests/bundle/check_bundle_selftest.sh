#!/usr/bin/env bash
# CTest bundle_check_reports_missing_libraries (tests/bundle/CMakeLists.txt):
# check_bundle.sh on fake bundles must fail naming each bad binary and its
# library, and pass the clean ones.
# Usage: check_bundle_selftest.sh CHECKER GOOD MISSING OUTSIDE DEP WORKDIR
set -euo pipefail
checker=$1 good=$2 missing=$3 outside=$4 dep=$5 work=$6
rm -rf "$work"
status=0
expect() {  # expect <rc> <name> <checker args...>; then the lines of output it must hold, on stdin
  local want=$1 name=$2 out rc=0
  shift 2
  out=$(bash "$checker" "$@" 2>&1) || rc=$?
  local ok=1
  [[ $rc == "$want" ]] || { echo "selftest $name: exit code $rc, expected $want"; ok=0; }
  while IFS= read -r needle; do
    [[ -z $needle ]] && continue
    if [[ $needle == '!'* ]]; then
      grep -qF -- "${needle#!}" <<<"$out" && { echo "selftest $name: output must not contain: ${needle#!}"; ok=0; }
    else
      grep -qF -- "$needle" <<<"$out" || { echo "selftest $name: output lacks: $needle"; ok=0; }
    fi
  done
  if [[ $ok == 0 ]]; then
    echo "---- checker output ($name):"; echo "$out"; echo "----"
    status=1
  else
    echo "selftest $name: ok"
  fi
}

dep_name=$(basename "$dep")
# A clean bundle: a binary needing only libc and the C++ runtime.
mkdir -p "$work/clean/bin" "$work/clean/lib"
cp "$good" "$work/clean/bin/"
expect 0 clean "$work/clean" <<<"ELF file(s) in $work/clean resolve"
# The same over a size limit of about 1 KiB.
expect 1 too_big "$work/clean" --max-mib 0.001 <<<"over the limit of 0.001 MiB"

# A bundle with a binary whose library is absent, and one whose RUNPATH is
# the build machine's library directory (so the library resolves outside).
mkdir -p "$work/broken/bin" "$work/broken/lib"
cp "$good" "$missing" "$outside" "$work/broken/bin/"
expect 1 broken "$work/broken" <<EOF2
check_bundle: FAIL bin/$(basename "$missing"): $dep_name not found
check_bundle: FAIL bin/$(basename "$outside"): RUNPATH names the absolute directory $(dirname "$dep")
check_bundle: FAIL bin/$(basename "$outside"): $dep_name resolves outside the bundle, to $(dirname "$dep")/$dep_name
!bin/$(basename "$good")
EOF2

# The library copied into lib/: the first binary now resolves inside.
mkdir -p "$work/fixed/bin" "$work/fixed/lib"
cp "$good" "$missing" "$work/fixed/bin/"
cp "$dep" "$work/fixed/lib/"
expect 0 fixed "$work/fixed" <<<"3 ELF file(s)"
exit $status
