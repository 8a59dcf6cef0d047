#!/usr/bin/env python3
"""Formats Google Benchmark JSON as the Markdown table used in docs/benchmarks.md."""
import json
import platform
import sys


def rate(bench):
    # GPU benchmarks (bench/cuda/) set rate counters computed from GPU time.
    for counter in ("TFLOP/s", "GB/s"):
        if counter in bench:
            return f"{bench[counter]:.2f} {counter}"
    if "GFLOP/s" in bench:  # counter already in GFLOP/s (bench_matmul.cpp)
        return f"{bench['GFLOP/s']:.1f} GFLOP/s"
    if "FLOP/s" in bench:  # counter in FLOP/s (bench_attention.cpp)
        return f"{bench['FLOP/s'] / 1e9:.2f} GFLOP/s"
    if "bytes_per_second" in bench:
        return f"{bench['bytes_per_second'] / 1e9:.2f} GB/s"
    if "items_per_second" in bench:
        return f"{bench['items_per_second'] / 1e6:.2f} M items/s"
    return ""


def gpu_name():
    try:
        import subprocess
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(path):
    with open(path) as f:
        data = json.load(f)
    ctx = data["context"]
    if "--gpu" in sys.argv:
        print(f"GPU: {gpu_name() or 'unknown (nvidia-smi failed)'}")
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    print(f"Machine: {cpu}, {ctx.get('num_cpus')} cores @ {ctx.get('mhz_per_cpu')} MHz; "
          f"date {ctx.get('date')}; library build {ctx.get('library_build_type')}\n")
    print("| benchmark | time per iteration | rate |")
    print("|---|---:|---:|")
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        unit = b.get("time_unit", "ns")
        print(f"| `{b['name']}` | {b['real_time']:.1f} {unit} | {rate(b)} |")


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--")][0])
