#!/usr/bin/env bash
# Checks a GPU bundle (scripts/gpu-bundle): its size, and that every binary
# and library in it loads with the bundle's own lib/ plus the allowed system
# and CUDA libraries only. Used by scripts/gpu-bundle (here) and by
# scripts/gpu-check --bundle (on the GPU machine, with --no-size).
#
# Usage: tests/bundle/check_bundle.sh DIR [--max-mib N] [--archive FILE --max-archive-mib N]
#                                     [--lib-path DIR[:DIR...]] [--no-size]
#   --lib-path  directories with the CUDA runtime, cuBLAS(Lt) and NCCL, put on
#               LD_LIBRARY_PATH after DIR/lib (nothing else of the system is)
#
# For each ELF file under DIR/bin and DIR/lib, `ldd` must resolve every
# dependency, and each one must either be on the allow-list (libc, libm,
# libdl, libpthread, librt, ld-linux, libstdc++, libgcc_s, libcuda,
# libcudart, libcublas, libcublasLt, libnccl) or come from DIR/lib. A
# RUNPATH naming an absolute directory (the build machine's) is refused too.
# Prints one line per problem ("check_bundle: FAIL bin/x: libfoo.so.1 not
# found") and exits 1 if there is any, 0 otherwise.
set -euo pipefail

die() { echo "check_bundle: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: check_bundle.sh DIR [--max-mib N] [--archive FILE --max-archive-mib N] [--lib-path DIRS] [--no-size]"
dir=$1; shift
max_mib=48
archive=""
max_archive_mib=12
lib_path=""
check_size=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --max-mib) max_mib=${2:?--max-mib needs a value}; shift 2 ;;
    --archive) archive=${2:?--archive needs a file}; shift 2 ;;
    --max-archive-mib) max_archive_mib=${2:?--max-archive-mib needs a value}; shift 2 ;;
    --lib-path) lib_path=${2?--lib-path needs directories}; shift 2 ;;
    --no-size) check_size=0; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -d $dir ]] || die "'$dir' is not a directory"
dir=$(cd "$dir" && pwd -P)
command -v ldd >/dev/null || die "ldd is not installed"

allowed='^(linux-vdso|linux-gate|ld-linux[-a-z0-9_]*|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so'
failures=0
fail() { echo "check_bundle: FAIL $*"; failures=$((failures + 1)); }

mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
over() { awk -v b="$1" -v m="$2" 'BEGIN { exit !(b > m * 1048576) }'; }

if [[ $check_size == 1 ]]; then
  bytes=$(du -sb "$dir" | cut -f1)
  if over "$bytes" "$max_mib"; then
    fail "$dir is $(mib "$bytes") MiB, over the limit of $max_mib MiB"
  else
    echo "check_bundle: size $(mib "$bytes") MiB (limit $max_mib MiB)"
  fi
  if [[ -n $archive ]]; then
    [[ -f $archive ]] || die "archive '$archive' does not exist"
    abytes=$(stat -c %s "$archive")
    if over "$abytes" "$max_archive_mib"; then
      fail "$archive is $(mib "$abytes") MiB, over the limit of $max_archive_mib MiB"
    else
      echo "check_bundle: archive $(mib "$abytes") MiB (limit $max_archive_mib MiB)"
    fi
  fi
fi

# The RUNPATH check needs readelf (binutils); a GPU machine may lack it.
have_readelf=0
if command -v readelf >/dev/null; then have_readelf=1; else echo "check_bundle: readelf not found: RUNPATHs not checked"; fi
ld_path="$dir/lib"
[[ -n $lib_path ]] && ld_path="$ld_path:$lib_path"
checked=0
while IFS= read -r -d '' file; do
  [[ -f $file && ! -L $file ]] || continue
  [[ $(head -c 4 "$file" | od -An -c | tr -d ' ') == '177ELF' ]] || continue
  rel=${file#"$dir"/}
  checked=$((checked + 1))
  runpath=""
  if [[ $have_readelf == 1 ]]; then
    runpath=$(LC_ALL=C readelf -d "$file" 2>/dev/null | sed -n 's/.*(\(RUNPATH\|RPATH\)).*\[\(.*\)\]$/\2/p')
  fi
  IFS=: read -r -a entries <<<"$runpath"
  for entry in "${entries[@]}"; do
    [[ -z $entry || $entry == '$ORIGIN'* ]] && continue
    fail "$rel: RUNPATH names the absolute directory $entry (only \$ORIGIN/... may appear)"
  done
  if ! out=$(env LD_LIBRARY_PATH="$ld_path" LC_ALL=C ldd "$file" 2>&1); then
    if grep -q "not a dynamic executable" <<<"$out"; then continue; fi
    fail "$rel: ldd failed: $(head -n 3 <<<"$out" | tr '\n' ' ')"
    continue
  fi
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    case "$line" in
      *"=> not found"*)
        name=${line%% *}
        fail "$rel: $name not found" ;;
      *"version \`"*"not found"*)
        fail "$rel: $line" ;;
      *" => "*)
        name=${line%% *}
        path=${line#* => }; path=${path% (*}
        [[ $name =~ $allowed ]] && continue
        real=$(readlink -f "$path")
        case "$real" in
          "$dir"/lib/*) ;;
          *) fail "$rel: $name resolves outside the bundle, to $path (copy it into lib/ or link it statically)" ;;
        esac ;;
    esac
  done <<<"$out"
done < <(find "$dir/bin" "$dir/lib" -type f -print0 2>/dev/null | sort -z)

[[ $checked -gt 0 ]] || fail "$dir has no ELF files under bin/ or lib/"
if [[ $failures -gt 0 ]]; then
  echo "check_bundle: $failures problem(s) in $dir"
  exit 1
fi
echo "check_bundle: $checked ELF file(s) in $dir resolve with lib/${lib_path:+ and $lib_path} and the allowed system libraries"
