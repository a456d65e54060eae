#!/usr/bin/env bash
# Set-up and main jobs: ./run.sh demo | test | bench. Creates and uses the virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv
PY=$VENV/bin/python

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "run as root, or install first: $*" >&2; exit 1; fi; }

setup() {
  # Reinstall when pyproject.toml changed since the last install.
  if [ -f "$VENV/.installed" ] && [ "$VENV/.installed" -nt pyproject.toml ]; then return; fi
  if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
    echo "installing python3-venv (Debian ships Python without it)"
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv
  fi
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e ".[train,export,quantize,dev]"
  touch "$VENV/.installed"
}

case "${1:-}" in
  demo)  setup; "$VENV/bin/dgs" demo --workdir demo ;;
  test)  setup; "$PY" -m ruff check sdk trainer export tests benchmarks; "$PY" -m pytest ;;
  bench) setup; "$PY" benchmarks/patch_select.py; "$PY" benchmarks/scan_throughput.py; "$PY" benchmarks/package_load.py
         "$PY" benchmarks/real_size.py; "$PY" benchmarks/precision.py; "$PY" benchmarks/students.py
         # On a machine with an NVIDIA GPU: the GPU figures too.
         if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
           "$PY" benchmarks/gpu_inference.py; "$PY" benchmarks/gpu_inference.py --cuda-graphs
           "$PY" benchmarks/train_step.py --arch ViT-L-14; "$PY" benchmarks/train_step.py --arch ViT-B-16
         fi ;;
  *) echo "usage: ./run.sh demo | test | bench" >&2; exit 2 ;;
esac
