"""Entry point of one stage process: ``python -m remembrall.pipeline.worker SPEC.json``."""

from __future__ import annotations

import logging
import sys

from remembrall.logs import setup_logging
from remembrall.pipeline.runtime import StageSpec, run_stage


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m remembrall.pipeline.worker SPEC.json", file=sys.stderr)
        return 2
    spec = StageSpec.from_file(argv[0])
    setup_logging(spec.config.get("log_level", "info"), component=spec.name)
    try:
        return run_stage(spec)
    except Exception:
        logging.getLogger("remembrall").exception("stage %s crashed", spec.name)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
