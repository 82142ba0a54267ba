#!/usr/bin/env bash
# Set up remembrall in ./.venv: torch first (CPU wheel, or keep the one already there, e.g. JetPack's),
# then the package. Idempotent. Usage: bash scripts/setup.sh [extra] (extra: dev, text, bench)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv ${REMEMBRALL_VENV_FLAGS:-} .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch in its own step: a range resolved before torch is installed would pull GBs of CUDA wheels.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
if [ -n "$extra" ]; then
  python -m pip install -q -e ".[$extra]"
else
  python -m pip install -q -e .
fi
