#!/usr/bin/env bash
# One command from a fresh machine to a passing test suite: system test servers and data
# (when root), the venv with torch first, then pytest and ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh dev
. .venv/bin/activate
ruff check .
lint-imports
python -m pytest -q "$@"
