"""The supervisor behind ``remembrall run``: start every stage process, keep them alive, drain.

- Stages start downstream-first (sink … infer), sources last, so no frame waits on a peer.
- A stage that crashes is restarted with exponential backoff; one that keeps crashing
  (``supervisor.max_restarts``) fails the run. A source whose input is unusable (exit 3) is not
  restarted: restarting cannot fix a missing file.
- Stopping (SIGINT/SIGTERM, ``--duration``, end of a file) always goes through the sources: they
  send end-of-stream and every stage drains what it holds, so nothing already ingested is lost.
  A second signal stops the stages at once; a third kills them.
- Children die with the supervisor, no orphans: if the supervisor itself dies they get a signal
  of their own (PR_SET_PDEATHSIG, see :mod:`remembrall.pipeline.lifeline`), save what they hold
  locally without waiting on any peer, and exit within ``supervisor.orphan_exit_s``.
- ``RUN_DIR/status.json`` (atomic, every second) is what ``remembrall status`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

from remembrall.atomic import atomic_write_bytes
from remembrall.config import Config
from remembrall.pipeline.delivery import restarts_message
from remembrall.pipeline.graph import build_graph, data_consumers, restarts_address, source_stage_names
from remembrall.pipeline.lifeline import die_with_parent
from remembrall.pipeline.messages import encode_message
from remembrall.pipeline.runtime import EXIT_BAD_SOURCE, StageSpec

log = logging.getLogger(__name__)

#: A stage that ran this long before crashing starts its backoff from the beginning again.
STABLE_AFTER_S = 30.0


class Service(Protocol):
    """Something that lives as long as the run, beside the stages (the browser UI)."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


@dataclass
class StageProcess:
    spec: StageSpec
    spec_path: Path
    proc: subprocess.Popen | None = None
    state: str = "pending"  # pending | running | restarting | finished | failed
    restarts: int = 0
    consecutive_failures: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0
    last_rc: int | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs one pipeline until it ends (files), is stopped, or fails."""

    def __init__(self, cfg: Config, out_dir: Path, sock_dir: Path, *, duration: float | None = None,
                 metrics_port: int | None = None, services: list[Service] | None = None,
                 stage_output: Callable[[bytes], None] | None = None) -> None:
        self.cfg = cfg
        self.services = list(services or [])
        #: where stage processes' log lines go (a terminal's status line prints them); None: inherited stderr
        self.stage_output = stage_output
        self.out_dir = out_dir
        self.sock_dir = sock_dir
        self.duration = duration
        self.metrics_port = cfg.metrics.port if metrics_port is None else metrics_port
        self.multiproc_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        self.stages: dict[str, StageProcess] = {}
        self.source_names: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        self.signals = 0
        self.stopping_sources = False
        self.drain_started: float | None = None
        self.failed_reason: str | None = None
        self.bad_sources: dict[str, str] = {}
        self.server = None
        self._frames_seen: dict[str, tuple[float, float]] = {}
        self.started = time.time()
        self._zmq: zmq.Context | None = None
        self._restarts_pub: zmq.Socket | None = None
        self._restarts_sent = 0.0

    # ------------------------------------------------------------------ setup
    def _write_specs(self) -> None:
        specs = build_graph(self.cfg, self.sock_dir, self.out_dir)
        spec_dir = self.sock_dir / "specs"
        spec_dir.mkdir(parents=True, exist_ok=True)
        for spec in specs:
            spec.run_dir = str(self.out_dir)
            path = spec_dir / f"{spec.name}.json"
            path.write_text(spec.to_json(), encoding="utf-8")
            self.stages[spec.name] = StageProcess(spec, path)
        self.source_names = source_stage_names(specs)
        self.consumers = data_consumers(specs)

    def _start_metrics(self) -> None:
        if not self.cfg.metrics.enabled:
            return
        from remembrall.monitoring.server import MetricsServer

        self.server = MetricsServer(str(self.multiproc_dir), self.cfg.metrics.host, self.metrics_port,
                                    healthz=self.healthz, readyz=self.readyz).start()
        log.info("metrics on %s/metrics (health: /healthz, /readyz)", self.server.url)

    # ------------------------------------------------------------------ processes
    def _spawn(self, sp: StageProcess) -> None:
        from remembrall.monitoring import metrics as m

        sp.spec.ready_file = str(self.sock_dir / "ready" / sp.spec.name)
        sp.spec.done_file = str(self.sock_dir / "done" / sp.spec.name)
        sp.spec.release_file = str(self.sock_dir / "release" / sp.spec.name)
        sp.spec.supervisor_pid = os.getpid()
        for marker in (sp.spec.ready_file, sp.spec.done_file, sp.spec.release_file):
            Path(marker).unlink(missing_ok=True)
        sp.spec_path.write_text(sp.spec.to_json(), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # Stages share few cores: OpenMP threads that spin while waiting steal them from the
        # other stages (measured: infer 2-5x slower on a busy 2-core machine without this).
        # Infer's own threads spin briefly between the parallel regions of one batch (GNU
        # OpenMP's GOMP_SPINCOUNT, ~100 spins per µs): sleeping and waking there cost the
        # pipeline up to a quarter of its frames (bench.throughput, paired runs), while a spin
        # this short costs an idle camera stream nothing.
        if sp.spec.type == "infer" and self.cfg.infer.omp_spin_us > 0:
            env.setdefault("GOMP_SPINCOUNT", str(int(self.cfg.infer.omp_spin_us * 100)))
        else:
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # only a source reading "-" may take stdin; nobody else should hold it
        reads_stdin = sp.spec.name in self.source_names and any(
            src.uri == "-" and src.id == self.source_names[sp.spec.name] for src in self.cfg.sources)
        piped = self.stage_output is not None
        if piped:
            env.setdefault("REMEMBRALL_LOG_FORMAT", "text")  # a pipe, but read by a person
        sp.proc = subprocess.Popen(
            [sys.executable, "-m", "remembrall.stages.worker", str(sp.spec_path)],
            env=env, preexec_fn=die_with_parent, stdin=None if reads_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else None, stderr=subprocess.STDOUT if piped else None,
        )
        if piped:
            threading.Thread(target=self._forward_output, args=(sp.proc,), name=f"out-{sp.spec.name}",
                             daemon=True).start()
        sp.pids.append(sp.proc.pid)
        sp.state = "running"
        sp.started_at = time.monotonic()
        m.STAGE_UP.labels(sp.spec.name).set(1)
        m.STAGE_RESTARTS.labels(sp.spec.name)  # exported at 0 from the start, so increase() sees the first
        log.info("started stage %s (pid %d)", sp.spec.name, sp.proc.pid)

    def _forward_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None and self.stage_output is not None
        with proc.stdout:
            for line in proc.stdout:
                try:
                    self.stage_output(line)
                except Exception:  # noqa: BLE001 - keep draining: a stage must never block on its log pipe
                    sys.stderr.buffer.write(line)

    def _finished_streams(self) -> list[str]:
        """Streams whose source is done (it sent its end-of-stream, and with at-least-once
        delivery everything it sent was acknowledged): a restarted stage does not wait for them."""
        return sorted(stream for name, stream in self.source_names.items()
                      if self.stages[name].state in ("finished", "failed")
                      or (self.stages[name].state == "running" and Path(self.stages[name].spec.done_file).exists()))

    def _open_restarts(self) -> None:
        """The PUB socket on which producers with at-least-once delivery learn of restarts."""
        self._zmq = zmq.Context()
        self._restarts_pub = self._zmq.socket(zmq.PUB)
        self._restarts_pub.setsockopt(zmq.LINGER, 0)
        self._restarts_pub.setsockopt(zmq.SNDHWM, 16)
        (self.sock_dir / "sockets").mkdir(parents=True, exist_ok=True)
        self._restarts_pub.bind(restarts_address(self.sock_dir))

    def _publish_restarts(self, force: bool = False) -> None:
        """Every stage's restart count, every half second and at once after a restart."""
        if self._restarts_pub is None or not (force or time.monotonic() - self._restarts_sent >= 0.5):
            return
        msg = restarts_message({n: sp.restarts for n, sp in self.stages.items()})
        try:
            self._restarts_pub.send_multipart(encode_message(msg), flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("cannot publish restart counts: %s", exc)
        self._restarts_sent = time.monotonic()

    def _close_restarts(self) -> None:
        if self._restarts_pub is not None and self._zmq is not None:
            self._restarts_pub.close(0)
            self._zmq.term()
            self._restarts_pub = self._zmq = None

    def _on_exit(self, sp: StageProcess, rc: int) -> None:
        from prometheus_client import multiprocess

        from remembrall.monitoring import metrics as m

        multiprocess.mark_process_dead(sp.proc.pid, str(self.multiproc_dir))
        sp.last_rc = rc
        m.STAGE_UP.labels(sp.spec.name).set(0)
        name = sp.spec.name
        if rc == 0:
            sp.state = "finished"
            log.info("stage %s finished", name)
            return
        if rc == EXIT_BAD_SOURCE and name in self.source_names:
            sp.state = "failed"
            self.bad_sources[name] = f"source {self.source_names[name]!r} ({sp.spec.type}) could not be read"
            log.error("stage %s: its source cannot be read; not restarting it (see the error above)", name)
            return
        if self.signals >= 2 or self.failed_reason:
            sp.state = "failed"
            return
        if name in self.source_names and self.stopping_sources:
            sp.state = "finished"
            return
        if time.monotonic() - sp.started_at > STABLE_AFTER_S:
            sp.consecutive_failures = 0
        sp.consecutive_failures += 1
        if sp.restarts >= self.cfg.supervisor.max_restarts:
            sp.state = "failed"
            self.failed_reason = f"stage {name} crashed {sp.restarts + 1} times (last exit status {rc})"
            log.error("%s; giving up", self.failed_reason)
            return
        sc = self.cfg.supervisor
        delay = min(sc.restart_backoff_max_s, sc.restart_backoff_s * 2 ** (sp.consecutive_failures - 1))
        sp.state = "restarting"
        sp.restart_at = time.monotonic() + delay
        how = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
        log.warning("stage %s died (%s); restarting in %.1f s", name, how, delay)

    def _restart(self, sp: StageProcess) -> None:
        from remembrall.monitoring import metrics as m

        sp.spec.finished_streams = self._finished_streams()
        sp.restarts += 1
        m.STAGE_RESTARTS.labels(sp.spec.name).inc()
        self._spawn(sp)
        self._publish_restarts(force=True)

    def _signal_stages(self, names: list[str], sig: int) -> None:
        for name in names:
            sp = self.stages[name]
            if sp.proc is not None and sp.proc.poll() is None:
                try:
                    sp.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def stop_sources(self, why: str) -> None:
        if self.stopping_sources:
            return
        log.info("stopping sources (%s); draining the pipeline", why)
        self.stopping_sources = True
        for name in self.source_names:
            sp = self.stages[name]
            if sp.state in ("pending", "restarting"):
                sp.state = "finished"
        self._signal_stages(list(self.source_names), signal.SIGTERM)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning("%s: stopping gracefully (again to stop at once)", signal.Signals(signum).name)
        elif self.signals == 2:
            log.warning("second signal: stopping every stage now")
        else:
            log.warning("third signal: killing every stage")

    # ------------------------------------------------------------------ probes & status
    def healthz(self) -> tuple[bool, dict]:
        stages = {n: sp.state for n, sp in self.stages.items()}
        ok = all(s in ("running", "finished", "pending") for s in stages.values())
        return ok, {"stages": stages}

    def readyz(self) -> tuple[bool, dict]:
        """Ready when every source delivered an item in the last 10 s (or finished its file)."""
        now = time.monotonic()
        detail = {}
        ok = True
        for name, stream in self.source_names.items():
            seen = self._frames_seen.get(name)
            delivering = seen is not None and now - seen[1] < 10.0
            done = self.stages[name].state == "finished"
            detail[stream] = "delivering" if delivering else ("finished" if done else "waiting")
            ok = ok and (delivering or done)
        return ok, {"sources": detail}

    def _sample_source_progress(self) -> None:
        if self.server is None:
            return
        totals: dict[str, float] = {}
        try:
            for family in self.server.registry.collect():
                if family.name != "remembrall_frames":
                    continue
                for s in family.samples:
                    if s.name == "remembrall_frames_total" and s.labels.get("stage") in self.source_names:
                        totals[s.labels["stage"]] = totals.get(s.labels["stage"], 0.0) + s.value
        except Exception as exc:  # a metrics file being written concurrently
            log.debug("could not read source progress: %s", exc)
            return
        now = time.monotonic()
        for name, total in totals.items():
            prev = self._frames_seen.get(name)
            if prev is None or total > prev[0]:
                self._frames_seen[name] = (total, now)

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "started": self.started,
            "updated": time.time(),
            "metrics_url": self.server.url if self.server else None,
            "out_dir": str(self.out_dir),
            "sock_dir": str(self.sock_dir),
            "stopping": self.stopping_sources,
            **{k: v for service in self.services for k, v in service.status().items()},
            "stages": {
                n: {"pid": sp.proc.pid if sp.proc else None, "state": sp.state, "restarts": sp.restarts,
                    "type": sp.spec.type, "streams": sp.spec.streams, "last_exit": sp.last_rc}
                for n, sp in self.stages.items()
            },
        }
        data = json.dumps(status, indent=1).encode()
        for directory in (self.out_dir, self.sock_dir):
            try:
                atomic_write_bytes(directory / "status.json", data)
            except OSError as exc:
                log.debug("cannot write status into %s: %s", directory, exc)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # resume points serve a stage restarted within this run; a new run reads its files anew
        shutil.rmtree(self.out_dir / "progress", ignore_errors=True)
        # the sink appends (a restarted sink keeps what it wrote); a new run starts a new file
        # and keeps the previous run's beside it
        predictions = self.out_dir / self.cfg.sink.path
        if predictions.exists() and predictions.stat().st_size:
            mtime = predictions.stat().st_mtime
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(mtime)) + f".{int(mtime * 1e6) % 1_000_000:06d}"
            kept = predictions.with_name(f"{predictions.stem}.{stamp}{predictions.suffix}")
            if not kept.exists():
                predictions.rename(kept)
        self._write_specs()
        if self.cfg.transport.at_least_once:
            self._open_restarts()
        self._start_metrics()
        from remembrall.monitoring.process_cost import ProcessCost

        cost = ProcessCost("supervisor")  # the supervisor and what it serves (metrics, UI)
        cost.start()
        for service in self.services:
            service.start()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        handled_signals = 0
        try:
            for sp in self.stages.values():  # graph order: downstream first, sources last
                self._spawn(sp)
            t_start = time.monotonic()
            last_status = 0.0
            while True:
                now = time.monotonic()
                for sp in self.stages.values():
                    if sp.state == "running" and sp.proc is not None:
                        rc = sp.proc.poll()
                        if rc is not None:
                            self._on_exit(sp, rc)
                    elif sp.state == "restarting" and now >= sp.restart_at and not self.failed_reason:
                        self._restart(sp)
                self._release_finished()
                if self.signals > handled_signals:
                    handled_signals = self.signals
                    live = [n for n, sp in self.stages.items() if sp.state in ("running", "restarting")]
                    if self.signals == 1:
                        self.stop_sources("signal")
                    else:
                        self._signal_stages(live, signal.SIGTERM if self.signals == 2 else signal.SIGKILL)
                        for n in live:
                            if self.stages[n].state == "restarting":
                                self.stages[n].state = "failed"
                if self.duration is not None and now - t_start >= self.duration:
                    self.stop_sources(f"--duration {self.duration:g} s reached")
                if self.failed_reason:
                    self.stop_sources("a stage failed")
                if all(self.stages[n].state in ("finished", "failed") or Path(self.stages[n].spec.done_file).exists()
                       for n in self.source_names):
                    if self.drain_started is None or self._starting():
                        # the drain clock runs only once every stage is set up (models loaded)
                        self.drain_started = now
                        self.stopping_sources = True
                    elif now - self.drain_started > self.cfg.supervisor.drain_timeout_s:
                        live = [n for n, sp in self.stages.items() if sp.state == "running"]
                        log.error("drain took over %.0f s; stopping %s", self.cfg.supervisor.drain_timeout_s,
                                  ", ".join(live))
                        self._signal_stages(live, signal.SIGTERM)
                        self.drain_started = now + 10.0 - self.cfg.supervisor.drain_timeout_s
                        self.failed_reason = self.failed_reason or "the pipeline did not drain in time"
                if all(sp.state in ("finished", "failed") for sp in self.stages.values()):
                    break
                self._publish_restarts()
                if now - last_status >= 1.0:
                    self._sample_source_progress()
                    self._write_status()
                    last_status = now
                time.sleep(0.05)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            cost.stop()
            self._kill_leftovers()
            self._close_restarts()
            self._write_status()
            for service in self.services:
                try:
                    service.stop()
                except Exception:  # noqa: BLE001 - a service must not hide the run's own outcome
                    log.exception("stopping %s failed", type(service).__name__)
            if self.server is not None:
                self.server.stop()
        return self._exit_code()

    def _release_finished(self) -> None:
        """Let a stage that is done exit once every stage it pushes data to has finished."""
        for name, sp in self.stages.items():
            if sp.state != "running" or not Path(sp.spec.done_file).exists():
                continue
            release = Path(sp.spec.release_file)
            if release.exists():
                continue
            if all(self.stages[c].state in ("finished", "failed") for c in self.consumers[name]):
                release.parent.mkdir(parents=True, exist_ok=True)
                release.touch()

    def _starting(self) -> bool:
        """True while a running stage has not finished its set-up yet."""
        return any(sp.state == "running" and not Path(sp.spec.ready_file).exists() for sp in self.stages.values())

    def _kill_leftovers(self) -> None:
        for sp in self.stages.values():
            if sp.proc is not None and sp.proc.poll() is None:
                sp.proc.terminate()
                try:
                    sp.proc.wait(5)
                except subprocess.TimeoutExpired:
                    sp.proc.kill()
                    sp.proc.wait()

    def _exit_code(self) -> int:
        if self.failed_reason:
            log.error("pipeline failed: %s", self.failed_reason)
            return 1
        if self.bad_sources:
            for msg in self.bad_sources.values():
                log.error("%s", msg)
            return 2
        if self.signals >= 2:
            return 130
        return 0

    def cleanup(self) -> None:
        shutil.rmtree(self.sock_dir / "specs", ignore_errors=True)
