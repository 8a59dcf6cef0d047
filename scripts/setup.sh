# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Installs missing Debian packages when run as root, or prints the exact
# apt-get line otherwise; then configures and builds with a CMake preset.
#
# Environment:
#   TESSERA_PRESET  CMake preset (default: "default"; "cpu" never uses nvcc)
#   TESSERA_CUDA    AUTO | ON | OFF, passed to CMake when set
#   TESSERA_JOBS    parallel build/test jobs (default: nproc)
#   TESSERA_CUDA_ARCHITECTURES  CUDA architectures to build (default: native
#                   with a GPU, 90 without; see tessera_cuda_architectures)

set -euo pipefail

TESSERA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESSERA_PRESET="${TESSERA_PRESET:-default}"
TESSERA_JOBS="${TESSERA_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Debian packages the build needs: compiler and build tools, OpenBLAS,
# GoogleTest and Google Benchmark (found with find_package, so no download),
# nlohmann/json, PCRE2 + utf8proc for the tokenizer, libsentencepiece for
# sentencepiece tokenizer.model files (InternLM2), libjpeg-turbo for JPEG
# files (decoded as Pillow decodes them, io/image.hpp), OpenMPI for
# multi-process groups under mpirun (comm/mpi.hpp). (stb_image, for the other
# image formats, is vendored in include/tessera/third_party.)
TESSERA_DEBIAN_PACKAGES=(cmake ninja-build g++ pkg-config libopenblas-openmp-dev libgtest-dev libbenchmark-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev libsentencepiece-dev libjpeg62-turbo-dev libopenmpi-dev openmpi-bin)

tessera_log() { printf '\033[1m[tessera]\033[0m %s\n' "$*" >&2; }

tessera_install_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    tessera_log "not a Debian/Ubuntu system: make sure CMake >= 3.24, Ninja, a C++20 compiler and OpenBLAS are installed"
    return 0
  fi
  local missing=()
  for pkg in "${TESSERA_DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    tessera_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    tessera_log "missing Debian packages; install them with:"
    echo "sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
}

# The CUDA architectures the scripts build: TESSERA_CUDA_ARCHITECTURES when
# set; the GPUs present ("native") where nvidia-smi sees one; otherwise (CI,
# no GPU) sm_90 alone. CMake's own default is seven architectures, which makes
# the kernel library and every test binary linking it about seven times
# bigger; the cuda_kernels_compile.sm_XX tests still compile every kernel for
# each of the seven, so narrowing the build loses no coverage.
tessera_cuda_architectures() {
  case "$TESSERA_PRESET" in cpu|debug|fuzz) return 0 ;; esac
  [ "${TESSERA_CUDA:-}" = OFF ] && return 0
  if [ -n "${TESSERA_CUDA_ARCHITECTURES:-}" ]; then
    echo "$TESSERA_CUDA_ARCHITECTURES"
  elif nvidia-smi -L >/dev/null 2>&1; then
    echo native
  else
    echo 90
  fi
}

tessera_configure_and_build() {
  local extra=()
  [ -n "${TESSERA_CUDA:-}" ] && extra+=("-DTESSERA_CUDA=${TESSERA_CUDA}")
  local archs
  archs="$(tessera_cuda_architectures)"
  [ -n "$archs" ] && extra+=("-DCMAKE_CUDA_ARCHITECTURES=${archs}")
  cd "$TESSERA_ROOT"
  tessera_log "configuring (preset ${TESSERA_PRESET}${TESSERA_CUDA:+, TESSERA_CUDA=${TESSERA_CUDA}}${archs:+, CUDA architectures ${archs}})"
  cmake --preset "$TESSERA_PRESET" "${extra[@]}" >/dev/null
  tessera_log "building with ${TESSERA_JOBS} jobs"
  cmake --build --preset "$TESSERA_PRESET" -j "$TESSERA_JOBS" "$@"
}
