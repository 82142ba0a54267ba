"""Entry point of one stage process: ``python -m remembrall.stages.worker SPEC.json``.

It lives with the stages (not in ``pipeline``) because it is what maps a spec's ``type`` to a
stage class; the supervisor names this module only as a command line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from remembrall.logs import setup_logging
from remembrall.pipeline.lifeline import EXIT_ORPHANED
from remembrall.pipeline.runtime import StageSpec, SupervisorGone
from remembrall.stages import stage_class

log = logging.getLogger(__name__)


def run_stage(spec: StageSpec) -> int:
    """Instantiate the stage class named by ``spec.type`` and run it to completion."""
    stage = stage_class(spec.type)(spec)
    stage.install_signal_handlers()
    stage.lifeline.start()
    if spec.ready_file:
        Path(spec.ready_file).parent.mkdir(parents=True, exist_ok=True)
        Path(spec.ready_file).write_text(str(os.getpid()))
    rc = EXIT_ORPHANED
    try:
        rc = int(stage.run() or 0)
        stage.wait_for_release()
    except SupervisorGone:
        pass  # what the stage holds locally was saved on the way out (its finally blocks)
    finally:
        stage.close()
    if stage.orphaned:
        log.warning("%s: exited without draining (the supervisor is gone)", spec.name)
        return EXIT_ORPHANED
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m remembrall.stages.worker SPEC.json", file=sys.stderr)
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
