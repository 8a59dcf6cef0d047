#!/usr/bin/env bash
# Builds and runs the CPU benchmark suite, writes the raw Google Benchmark JSON
# to build/<preset>/bench/results.json and prints a Markdown table for
# docs/benchmarks.md (with the machine and date).
# Usage: bench/run_cpu_benchmarks.sh [--benchmark_filter=REGEX]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
preset="${TESSERA_PRESET:-default}"
cd "$root"
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" --target tessera_bench >/dev/null
out="build/$preset/bench/results.json"
"build/$preset/bench/tessera_bench" --benchmark_out="$out" --benchmark_out_format=json \
  --benchmark_min_time="${TESSERA_BENCH_MIN_TIME:-0.2}" "$@" >&2
python3 bench/format_results.py "$out"
