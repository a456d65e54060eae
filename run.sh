#!/usr/bin/env bash
# Set-up and main jobs: ./run.sh demo | test | bench. Creates and uses the virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv
PY=$VENV/bin/python

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "run as root, or install first: $*" >&2; exit 1; fi; }

setup_python() {
  # Reinstall when pyproject.toml changed since the last install.
  if [ -f "$VENV/.installed" ] && [ "$VENV/.installed" -nt pyproject.toml ]; then return; fi
  if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
    echo "installing python3-venv (Debian ships Python without it)"
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv
  fi
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e ".[train,export,quantize,report,provenance,dev]"
  touch "$VENV/.installed"
}

# The native core (cpp_bindings/) builds from these Debian packages; it is optional: without them the SDK runs on
# numpy and opencv-python alone.
NATIVE_DEBS="g++ cmake ninja-build pkg-config libopencv-dev libzip-dev nlohmann-json3-dev libssl-dev libprotobuf-dev
  libgtest-dev"

missing_debs() {
  local deb
  for deb in $NATIVE_DEBS; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q ' installed$' || echo "$deb"
  done
}

# Succeeds when the native core's build packages are present, installing the missing ones when allowed to.
native_toolchain() {
  local missing
  missing=$(missing_debs | xargs)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null && ! { [ -t 0 ] && command -v sudo >/dev/null; }; then
    echo "native core: its build packages are missing ($missing): run as root, or install them first" >&2
    return 1
  fi
  echo "installing the native core's build packages: $missing"
  as_root apt-get update -qq
  # shellcheck disable=SC2086
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

setup_native() {
  # Rebuilt (incrementally, in build/native) when a file of the C++ tree changed since the last install.
  local stamp=$VENV/.native-installed
  if [ -f "$stamp" ] && [ -z "$(find CMakeLists.txt cpp_bindings -newer "$stamp" -print -quit)" ]; then return; fi
  if ! command -v dpkg-query >/dev/null; then  # not Debian or Ubuntu: try with what is installed
    "$PY" -m pip install --quiet ./cpp_bindings && touch "$stamp" && return
    echo "native core: not built (see the README for its build packages); the SDK runs without it" >&2; return
  fi
  if ! native_toolchain; then echo "native core: not built; the SDK runs without it" >&2; return; fi
  # Built with the venv's build tools (cpp_bindings/pyproject.toml's build-system.requires), not in a fresh isolated
  # environment each time: nanobind's path then stays the same and only the C++ files that changed compile again.
  "$PY" -m pip install --quiet "scikit-build-core>=0.10" "nanobind>=2.4"
  "$PY" -m pip install --quiet --no-build-isolation ./cpp_bindings
  touch "$stamp"
}

setup() { setup_python; setup_native; }

# The C and C++ tests (ctest) in build/cpp; skipped, saying so, where the build packages cannot be installed.
test_native() {
  if command -v dpkg-query >/dev/null && ! native_toolchain; then
    echo "native core: C++ build and ctest skipped" >&2; return
  fi
  cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release -DDGS_TEST_PYTHON="$PWD/$PY" >/dev/null
  cmake --build build/cpp
  ctest --test-dir build/cpp --output-on-failure
  # Again under AddressSanitizer and UndefinedBehaviorSanitizer: the hostile packages, headers and folders then
  # fail on a bad read or an overflow, not only on a wrong answer.
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDGS_SANITIZE=ON \
    -DDGS_TEST_PYTHON="$PWD/$PY" >/dev/null
  cmake --build build/asan
  ctest --test-dir build/asan --output-on-failure
}

case "${1:-}" in
  demo)  setup; "$VENV/bin/dgs" demo --workdir demo ;;
  test)  setup; "$PY" -m ruff check sdk trainer export tests benchmarks; test_native
         # Where dgs_native was built, its tests must run rather than skip.
         if [ -f "$VENV/.native-installed" ]; then export DGS_REQUIRE_NATIVE=1; fi
         "$PY" -m pytest ;;
  bench) setup; "$PY" benchmarks/patch_select.py; "$PY" benchmarks/scan_throughput.py; "$PY" benchmarks/package_load.py
         if "$PY" -c "import dgs_native" 2>/dev/null; then "$PY" benchmarks/scan_throughput.py --native-compare; fi
         "$PY" benchmarks/real_size.py; "$PY" benchmarks/precision.py; "$PY" benchmarks/students.py
         # On a machine with an NVIDIA GPU: the GPU figures too.
         if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
           "$PY" benchmarks/gpu_inference.py; "$PY" benchmarks/gpu_inference.py --cuda-graphs
           "$PY" benchmarks/train_step.py --arch ViT-L-14; "$PY" benchmarks/train_step.py --arch ViT-B-16
         fi ;;
  *) echo "usage: ./run.sh demo | test | bench" >&2; exit 2 ;;
esac
