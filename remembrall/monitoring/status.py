"""``remembrall status``: what a running pipeline is doing, from its status file and its metrics.

The supervisor rewrites ``RUN_DIR/status.json`` every second (stage pids, states, restarts) and
serves all stages' metrics on one endpoint. This command reads the file, scrapes ``/metrics``
twice one interval apart and prints, per stage, its state, restarts and throughput (the rate of
``remembrall_frames_total``), plus the model version infer is serving. With ``--metrics-url``
alone (a pipeline on another host) it works from the metrics only.

Exit status: 0 the pipeline runs and every stage is running or finished; 1 it is degraded
(a stage restarting or failed, the supervisor gone, metrics unreachable); 2 no run was found or
the arguments are wrong.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_RUN_DIR = "/run/remembrall"
EXIT_OK, EXIT_DEGRADED, EXIT_NOT_FOUND = 0, 1, 2


class StatusError(Exception):
    """A problem the user can act on (no run found, unreadable status file, bad URL)."""


@dataclass
class Scrape:
    """The few series ``status`` needs from one scrape of ``/metrics``."""

    t: float
    frames: dict[str, float] = field(default_factory=dict)  # stage -> frames, summed over streams
    model_version: dict[str, float] = field(default_factory=dict)  # stage -> max over streams
    stage_up: dict[str, float] = field(default_factory=dict)
    restarts: dict[str, float] = field(default_factory=dict)


def _newest_status_dir(base: Path) -> Path | None:
    """``base`` itself when it holds a status.json, else its newest ``remembrall-*`` child that does
    (the supervisor makes ``BASE/remembrall-XXXX`` for each run's sockets and status)."""
    if (base / "status.json").is_file():
        return base
    found = []
    for d in base.glob("remembrall-*"):
        try:
            found.append((os.stat(d / "status.json").st_mtime, str(d)))
        except OSError:
            continue
    return Path(max(found)[1]) if found else None


def find_run_dir(explicit: str | None = None) -> Path:
    """The directory holding the run's status.json: ``explicit`` (a run dir, its parent or the run's
    ``--out`` dir), else ``$REMEMBRALL_RUN_DIR``, else ``/run/remembrall`` (the systemd unit's
    RuntimeDirectory), else the system temp dir; in each, the newest ``remembrall-*`` run wins."""
    for candidate in (explicit, os.environ.get("REMEMBRALL_RUN_DIR")):
        if candidate:
            found = _newest_status_dir(Path(candidate))
            if found is None:
                raise StatusError(f"{candidate}: no status.json here or in remembrall-*/ below it "
                                  "(is a pipeline running with this run dir?)")
            return found
    for base in (DEFAULT_RUN_DIR, tempfile.gettempdir()):
        found = _newest_status_dir(Path(base))
        if found is not None:
            return found
    raise StatusError(
        f"no running pipeline found: no status.json under $REMEMBRALL_RUN_DIR, {DEFAULT_RUN_DIR} "
        f"or {tempfile.gettempdir()}/remembrall-*; pass --run-dir DIR or --metrics-url URL"
    )


def read_status(run_dir: Path) -> dict[str, Any]:
    """Parse ``run_dir/status.json`` (the supervisor writes it atomically, so it is whole)."""
    path = run_dir / "status.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StatusError(f"{path}: not found (the pipeline has not started or has exited)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatusError(f"{path}: unreadable status file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise StatusError(f"{path}: not a remembrall status file (expected an object with 'stages')")
    return data


def metrics_endpoint(url: str) -> str:
    """Accept ``host:port``, ``http://host:port`` or the full ``…/metrics`` URL."""
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise StatusError(f"{url}: metrics URL must be http:// or https://")
    base = url.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def parse_metrics(text: str, t: float) -> Scrape:
    """Pick frames, model version, stage up and restarts out of a text exposition."""
    out = Scrape(t=t)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            stage = s.labels.get("stage", "")
            if s.name == "remembrall_frames_total":
                out.frames[stage] = out.frames.get(stage, 0.0) + s.value
            elif s.name == "remembrall_model_version":
                out.model_version[stage] = max(out.model_version.get(stage, s.value), s.value)
            elif s.name == "remembrall_stage_up":
                out.stage_up[stage] = s.value
            elif s.name == "remembrall_stage_restarts_total":
                out.restarts[stage] = s.value
    return out


def scrape(url: str, timeout: float = 3.0) -> Scrape:
    """GET ``url`` and parse it; unreachable or malformed metrics are a :class:`StatusError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) checked above
            body = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"{url}: metrics unreachable: {getattr(exc, 'reason', exc)}") from None
    try:
        return parse_metrics(body, time.monotonic())
    except ValueError as exc:
        raise StatusError(f"{url}: not a Prometheus text exposition: {exc}") from None


def rates(first: Scrape, second: Scrape) -> dict[str, float]:
    """Frames per second per stage between two scrapes (a counter reset counts from zero)."""
    dt = max(second.t - first.t, 1e-9)
    out = {}
    for stage, value in second.frames.items():
        before = first.frames.get(stage, 0.0)
        out[stage] = (value - before if value >= before else value) / dt
    return out


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def render(status: dict[str, Any] | None, run_dir: Path | None, url: str | None, first: Scrape | None,
           second: Scrape | None, error: str | None, out: TextIO) -> int:
    """Print the report; return the exit status it implies."""
    code = EXIT_OK
    stages: dict[str, dict[str, Any]] = dict((status or {}).get("stages") or {})
    if status is not None:
        pid = status.get("pid")
        alive = _pid_alive(pid)
        started = status.get("started")
        up = f", up {_age(time.time() - started)}" if isinstance(started, (int, float)) and alive else ""
        state = "running" if alive else "NOT RUNNING (stale status file)"
        if alive and status.get("stopping"):
            state = "stopping (draining)"
        print(f"pipeline  {state}: supervisor pid {pid}{up}", file=out)
        print(f"run dir   {run_dir}", file=out)
        if status.get("out_dir"):
            print(f"out dir   {status['out_dir']}", file=out)
        if not alive:
            code = EXIT_DEGRADED
    print(f"metrics   {url or 'none'}" + (f"  ({error})" if error else ""), file=out)
    if error:
        code = EXIT_DEGRADED
    throughput = rates(first, second) if first and second else {}
    names = list(stages)
    if second is not None:
        names += [s for s in sorted(set(second.stage_up) | set(second.frames)) if s and s not in stages]
    rows = [("STAGE", "TYPE", "STATE", "PID", "RESTARTS", "FRAMES/S", "STREAMS")]
    for name in names:
        info = stages.get(name, {})
        state = info.get("state")
        if state is None and second is not None and name in second.stage_up:
            state = "up" if second.stage_up[name] >= 1 else "down"
        if state in ("restarting", "failed", "down"):
            code = EXIT_DEGRADED
        restarts = info.get("restarts", second.restarts.get(name) if second else None)
        fps = throughput.get(name)
        streams = info.get("streams") or []
        rows.append((
            name, str(info.get("type", "?")), str(state or "?"), str(info.get("pid") or "-"),
            "?" if restarts is None else str(int(restarts)),
            "-" if fps is None else f"{fps:.1f}",
            ",".join(map(str, streams)) if isinstance(streams, list) else str(streams),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    if len(rows) == 1:
        print("(no stages reported yet)", file=out)
    print(file=out)
    if second is not None:
        serving = {k: v for k, v in second.model_version.items() if k == "infer" or k.startswith("infer")}
        if serving:
            versions = sorted({int(v) for v in serving.values()})
            print("serving model version: " + ", ".join(str(v) for v in versions)
                  + ("  (0 = base model)" if 0 in versions else ""), file=out)
        else:
            print("serving model version: unknown (infer exports no remembrall_model_version yet)", file=out)
    return code


def status_main(argv: list[str]) -> int:
    """Entry point of ``remembrall status``; returns the process exit status."""
    ap = argparse.ArgumentParser(prog="remembrall status", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", help="the pipeline's run directory (default: $REMEMBRALL_RUN_DIR, "
                    f"{DEFAULT_RUN_DIR}, or the newest /tmp/remembrall-*)")
    ap.add_argument("--metrics-url", help="scrape this endpoint instead of the one in status.json "
                    "(e.g. http://127.0.0.1:9108/metrics)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between the two scrapes (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return EXIT_NOT_FOUND if exc.code else EXIT_OK
    if args.interval <= 0 or args.interval > 60:
        print("remembrall status: --interval must be in (0, 60] seconds", file=sys.stderr)
        return EXIT_NOT_FOUND

    status: dict[str, Any] | None = None
    run_dir: Path | None = None
    try:
        if args.run_dir or not args.metrics_url:
            run_dir = find_run_dir(args.run_dir)
            status = read_status(run_dir)
        raw_url = args.metrics_url or (status or {}).get("metrics_url")
        url = metrics_endpoint(raw_url) if raw_url else None
    except StatusError as exc:
        print(f"remembrall status: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND

    first = second = None
    error = None if url else "the status file names no metrics endpoint (metrics disabled?)"
    if url:
        try:
            first = scrape(url)
            time.sleep(args.interval)  # the rate needs two scrapes a known interval apart
            second = scrape(url)
        except StatusError as exc:
            error = str(exc).split(": ", 1)[-1]
    if args.json:
        doc = {
            "run_dir": str(run_dir) if run_dir else None,
            "supervisor_alive": _pid_alive((status or {}).get("pid")) if status else None,
            "metrics_url": url, "error": error,
            "stages": (status or {}).get("stages", {}),
            "frames_per_s": rates(first, second) if first and second else {},
            "model_version": second.model_version if second else {},
        }
        print(json.dumps(doc, indent=1, sort_keys=True))
        return render(status, run_dir, url, first, second, error, io.StringIO())
    return render(status, run_dir, url, first, second, error, sys.stdout)
