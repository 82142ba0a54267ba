"""Memory and file descriptors over a long run: does any process leak?

    python -m bench.soak --minutes 30 --json out/soak.json     # the README figure
    python -m bench.soak --smoke --json out/soak-smoke.json    # ~20 s: checks the machinery

The demo pipeline (Big Buck Bunny, learning with the teacher labeler, UI on) plays its video in
a loop at a camera's rate (``--fps``, 25; ``sources[].realtime``) for ``--minutes``. Every ``--interval`` seconds the
resident memory (``/proc/PID/statm``) and open file descriptors (``/proc/PID/fd``) of the
supervisor and of every stage process are sampled (a restarted stage is followed to its new pid
and its restart counted). After the warm-up (``--warmup`` of the run, default 20 %: models
loaded, buffers and memories filling) each process's growth is the median of the last tenth of
the samples over the median of the first tenth after warm-up, minus one.

Exit status 1 — a leak — when any process grew by more than ``--max-growth`` (5 %) in RSS or by
more than ``--max-fd-growth`` (8) descriptors, or a stage restarted; the table says which. The
smoke run is too short to judge growth and only checks that everything is sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, print_table, write_json
from remembrall.heap import rss_bytes

REPO = Path(__file__).resolve().parents[1]


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def growth(values: list[float], warmup: int) -> float | None:
    """Median of the last tenth over the median of the first tenth after ``warmup`` samples, minus 1."""
    steady = values[warmup:]
    if len(steady) < 4:
        return None
    k = max(1, len(steady) // 10)
    first, last = statistics.median(steady[:k]), statistics.median(steady[-k:])
    return last / first - 1 if first > 0 else None


def sample_run(cmd: list[str], out: Path, seconds: float, interval: float, log_path: Path
               ) -> tuple[dict[str, list[tuple[float, int, int]]], dict[str, Any], int]:
    """Run ``cmd`` and sample every process every ``interval`` s; (samples by process, status, rc)."""
    samples: dict[str, list[tuple[float, int, int]]] = {}
    status: dict[str, Any] = {}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, REMEMBRALL_LOG_FORMAT="json"))
        t0 = time.monotonic()
        try:
            # sampled until --duration is up: the drain that follows is shutdown, not steady state
            while proc.poll() is None and time.monotonic() - t0 < seconds - interval / 2:
                try:
                    status = json.loads((out / "status.json").read_text())
                except (OSError, ValueError):
                    time.sleep(0.5)
                    continue
                pids = {"supervisor": proc.pid, **{n: s["pid"] for n, s in status["stages"].items() if s["pid"]}}
                now = time.monotonic() - t0
                for name, pid in pids.items():
                    rss, fds = rss_bytes(pid), open_fds(pid)
                    if rss is not None and fds is not None:
                        samples.setdefault(name, []).append((round(now, 1), rss, fds))
                time.sleep(interval)
        finally:
            try:
                rc = proc.wait(300)  # --duration ends the run: sources stop, every stage drains
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    return samples, status, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=25.0, help="camera rate the looping video is played at")
    p.add_argument("--interval", type=float, help="seconds between samples (default 10, smoke 1)")
    p.add_argument("--warmup", type=float, default=0.2, help="share of the run left out as warm-up")
    p.add_argument("--max-growth", type=float, default=0.05)
    p.add_argument("--max-fd-growth", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="10 s at small frames: checks the machinery only")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    seconds = 10.0 if args.smoke else args.minutes * 60
    interval = args.interval or (0.5 if args.smoke else 10.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="rb-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    cmd = [sys.executable, "-m", "remembrall", "run", "demo", "--out", str(out), "--metrics-port", "0",
           "--ui-port", "0", "--duration", str(seconds), "--set", "sources.0.loop=0",
           "--set", f"sources.0.max_fps={args.fps}", "--set", "sources.0.realtime=true"]
    if args.smoke:
        cmd += ["--set", "decode.width=96", "--set", "decode.height=96", "--set", "infer.image_size=96"]
    started = time.time()
    samples, status, rc = sample_run(cmd, out, seconds, interval, work / "pipeline.log")
    if rc != 0 or not samples:
        print(f"soak: the pipeline exited {rc} (log: {work / 'pipeline.log'})", file=sys.stderr)
        return 2
    per: dict[str, Any] = {}
    leaks = []
    for name, rows in sorted(samples.items()):
        warm = int(len(rows) * args.warmup)
        rss_g = growth([r[1] for r in rows], warm)
        fd_steady = [r[2] for r in rows[warm:]] or [r[2] for r in rows]
        restarts = (status.get("stages", {}).get(name) or {}).get("restarts", 0)
        per[name] = {"samples": len(rows), "rss_start_bytes": rows[warm][1] if warm < len(rows) else rows[0][1],
                     "rss_end_bytes": rows[-1][1], "rss_growth": None if rss_g is None else round(rss_g, 4),
                     "fds_start": fd_steady[0], "fds_end": fd_steady[-1], "fd_growth": fd_steady[-1] - fd_steady[0],
                     "restarts": restarts}
        if not args.smoke and ((rss_g is not None and rss_g > args.max_growth)
                               or fd_steady[-1] - fd_steady[0] > args.max_fd_growth or restarts):
            leaks.append(name)
    frames = None
    try:
        frames = sum(1 for _ in (out / "predictions.jsonl").open())
    except OSError:
        pass
    report = {"minutes": round(seconds / 60, 2), "fps": args.fps, "interval_s": interval, "warmup": args.warmup,
              "smoke": args.smoke, "max_growth": args.max_growth, "max_fd_growth": args.max_fd_growth,
              "predictions": frames, "processes": per, "leaks": leaks, "ok": not leaks,
              "samples": {k: v for k, v in samples.items()}, "wall_s": round(time.time() - started, 1),
              "machine": machine()}
    write_json(args.json, report)
    print_table([[n, r["samples"], f"{r['rss_start_bytes'] / 2**20:.0f}", f"{r['rss_end_bytes'] / 2**20:.0f}",
                  "-" if r["rss_growth"] is None else f"{100 * r['rss_growth']:+.1f} %", r["fds_start"], r["fds_end"],
                  r["restarts"]] for n, r in per.items()],
                ["process", "samples", "RSS MiB (after warm-up)", "RSS MiB (end)", "growth", "fds", "fds end",
                 "restarts"])
    print(f"{frames} predictions in {seconds / 60:.1f} min; written to {args.json}")
    if leaks:
        print(f"soak: LEAK — {', '.join(leaks)} grew past {100 * args.max_growth:.0f} % RSS or "
              f"{args.max_fd_growth} descriptors, or restarted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
