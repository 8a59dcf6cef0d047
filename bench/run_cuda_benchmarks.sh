#!/usr/bin/env bash
# Runs the GPU benchmark suite (tessera_bench_cuda) on Cuda<0>, writes the raw
# Google Benchmark JSON next to it and prints a Markdown table (GPU model,
# machine and date) for docs/benchmarks.md. Rates are computed from GPU time
# measured with CUDA events.
# Usage: bench/run_cuda_benchmarks.sh [BUILD_DIR] [--benchmark_filter=REGEX]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build/cuda"
if [[ $# -gt 0 && $1 != --* ]]; then build="$1"; shift; fi
cd "$root"
if [[ ! -x "$build/bench/tessera_bench_cuda" ]]; then
  cmake --preset cuda >/dev/null
  cmake --build --preset cuda --target tessera_bench_cuda >/dev/null
fi
out="$build/bench/results_cuda.json"
"$build/bench/tessera_bench_cuda" --benchmark_out="$out" --benchmark_out_format=json \
  --benchmark_min_time="${TESSERA_BENCH_MIN_TIME:-0.2}" "$@" >&2
python3 bench/format_results.py "$out" --gpu
