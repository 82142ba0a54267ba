"""End to end: the real pipeline, scraped by a real Prometheus, queried the way Grafana would.

One run of ``remembrall run configs/demo.yaml`` (its video looped, ``--set sources.0.loop=0``,
so the test decides when it ends) and one Debian ``prometheus`` with the shipped scrape config and
alert rules, both on 127.0.0.1. Then:

- every PromQL expression of every dashboard panel (template variables substituted as Grafana
  would with "All" selected) must return data, except panels whose description says
  ``Needs: X`` for a feature X this pipeline does not have (the learning stages, labelled
  streams): those must still be valid queries;
- the template variables' label values name the running stages and streams;
- every alert rule is loaded and evaluates without error;
- ``remembrall status`` reports the stages, the restart we caused and the throughput;
- stopping the decode process (SIGSTOP) makes the stream-stalled alert fire and /readyz fail.

The stall rule runs with its windows shortened (1m -> 10s) so it fires within the test; the
shipped windows are checked against synthetic series by ``promtool test rules``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "remembrall.json"

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="prometheus not installed (apt-get install prometheus)")

#: How Grafana expands the dashboard's variables with "All" selected and a 1 s scrape interval.
SUBSTITUTIONS = {"$__rate_interval": "15s", "$__range": "1h", "$stream": ".*", "$stage": ".*"}
STAGE = "decode-demo"  # the demo's source stage (graph.py names it decode-<stream id>)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path | None = None, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n{tail}")


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        code, body = http_get(url)
        doc = json.loads(body)
        if code != 200 or doc.get("status") != "success":
            raise ValueError(f"{path} {params}: HTTP {code}: {doc.get('error', body[:300])}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def panel_needs(panel: dict[str, Any]) -> set[str]:
    m = re.search(r"Needs: ([^.]+)\.", panel.get("description", ""))
    return {x.strip() for x in m.group(1).split(",")} if m else set()


def fast_stall_rule() -> dict[str, Any]:
    """The shipped stall rule with its windows scaled down for a test that lasts seconds."""
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r["alert"] == "RemembrallStreamStalled"]
    expr = rule["expr"].replace("[1m]", "[10s]").replace("[2m]", "[20s]")
    assert expr != rule["expr"]
    return dict(rule, expr=expr, labels=dict(rule["labels"], variant="test-10s"), **{"for": "3s"})


@contextlib.contextmanager
def running(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def stop_pipeline(proc: subprocess.Popen, status_file: Path) -> None:
    """SIGINT drains; a second SIGINT stops every stage; then kill. No stage may outlive the test."""
    pids = []
    with contextlib.suppress(OSError, ValueError):
        pids = [s["pid"] for s in json.loads(status_file.read_text())["stages"].values() if s.get("pid")]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    # (a graceful drain of the demo's backlog takes long on a small machine; not what this tests)
    for sig, wait in ((signal.SIGINT, 3), (signal.SIGINT, 3), (signal.SIGINT, 3), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    deadline = time.monotonic() + 10
    for pid in pids:  # children die with the supervisor (PR_SET_PDEATHSIG); make sure
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_dashboard_and_alerts_against_real_prometheus_and_pipeline() -> None:
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rmb-e2e-"))  # short: ipc socket paths are limited to 107 bytes
    try:
        _run(work, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mark(t_start: float, what: str) -> None:
    print(f"[{time.monotonic() - t_start:5.1f} s] {what}")


def _run(work: Path, t_start: float) -> None:
    metrics_port, prom_port = free_port(), free_port()
    out, run_base = work / "out", work / "run"
    run_base.mkdir()
    status_file = out / "status.json"

    # The shipped scrape config and rules, pointed at this run, scraping every second.
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    prom_cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [j for j in prom_cfg["scrape_configs"] if j["job_name"] == "remembrall"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    fast = work / "stall_fast.yml"
    fast.write_text(yaml.safe_dump({"groups": [{"name": "test-fast", "rules": [fast_stall_rule()]}]}))
    prom_cfg["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml"), str(fast)]
    (work / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg), encoding="utf-8")

    env = dict(os.environ, REMEMBRALL_RUN_DIR=str(run_base), REMEMBRALL_LOG_FORMAT="json")
    pipe_log, prom_log = work / "pipeline.log", work / "prometheus.log"
    # The demo config, its video looped until the test stops it (--duration is only a safety cap).
    pipeline_cmd = [sys.executable, "-m", "remembrall", "run", "configs/demo.yaml", "--ui-port", "0", "--set", "sources.0.loop=0",
                    "--duration", "200", "--out", str(out), "--metrics-port", str(metrics_port)]
    prom_cmd = ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
    prom = Prometheus(prom_port)
    metrics_url = f"http://127.0.0.1:{metrics_port}"

    with running(prom_cmd, prom_log) as prom_proc, running(pipeline_cmd, pipe_log, env) as pipeline:
        try:
            wait_for("prometheus ready", lambda: http_get(prom.base + "/-/ready")[0] == 200, 30, prom_log)
            assert prom_proc.poll() is None
            status = lambda: json.loads(status_file.read_text())  # noqa: E731

            def stages_running() -> bool:
                assert pipeline.poll() is None, "the pipeline exited"
                return all(s["state"] == "running" for s in status()["stages"].values())

            _mark(t_start, "prometheus ready")
            wait_for("all stages started", stages_running, 60, pipe_log)
            # A crash and a restart (while infer still loads its model): the restart counter and the
            # restart panels get real data, and the source resumes.
            old_pid = status()["stages"][STAGE]["pid"]
            os.kill(old_pid, signal.SIGKILL)
            # Garbage on infer's input socket: counted as a malformed drop, never a crash.
            infer_in = Path(status()["sock_dir"]) / "sockets" / "infer.in"
            wait_for("infer's input socket", infer_in.exists, 30, pipe_log, every=0.1)
            _send_garbage(infer_in)
            wait_for("decode restarted",
                     lambda: (s := status()["stages"][STAGE])["restarts"] == 1 and s["state"] == "running"
                     and s["pid"] != old_pid, 30, pipe_log)
            _mark(t_start, "decode killed and restarted, garbage sent")
            # steady state as Prometheus sees it: predictions keep arriving within a 15 s window
            wait_for("predictions flowing",
                     lambda: prom.query('rate(remembrall_frames_total{stage="sink"}[15s]) > 0'), 60, pipe_log)
            wait_for("frames flowing from the restarted decoder",
                     lambda: prom.query(f'rate(remembrall_frames_total{{stage="{STAGE}"}}[3s]) > 0'), 40, pipe_log)
            wait_for("malformed drop scraped",
                     lambda: prom.query('remembrall_frames_dropped_total{stage="infer",reason=~"malformed.*"} > 0'),
                     20, pipe_log)
            if "retrain" in {s["type"] for s in status()["stages"].values()}:
                # the demo learns: wait for a real retraining run and a real hot-swap
                wait_for("a retraining run and a hot-swap scraped",
                         lambda: prom.query("remembrall_retrain_runs_total > 0")
                         and prom.query("remembrall_swap_seconds_count > 0"), 120, pipe_log)
            time.sleep(2)  # a couple more scrapes so every 15 s window holds several samples

            _mark(t_start, "restart, malformed drop seen")
            _check_panels(prom, {s["type"] for s in status()["stages"].values()})
            _check_variables(prom)
            _check_rules(prom)
            _check_status_command(out)

            _mark(t_start, "panels, variables, rules, status checked")
            code, body = http_get(metrics_url + "/healthz")
            assert code == 200 and json.loads(body)["ok"], body
            assert http_get(metrics_url + "/readyz")[0] == 200

            # Stall: freeze the source stage. The stall alert fires; readiness fails. First the rule
            # must be quiet while frames flow, so that its firing is caused by the freeze.
            def stall_alerts(*states: str) -> list[dict[str, Any]]:
                return [a for a in prom.api("alerts")["alerts"]
                        if a["labels"].get("alertname") == "RemembrallStreamStalled"
                        and a["labels"].get("stage") == STAGE and a["state"] in states]

            wait_for("stall rule quiet while frames flow", lambda: not stall_alerts("pending", "firing"), 30, pipe_log)
            decode_pid = status()["stages"][STAGE]["pid"]
            os.kill(decode_pid, signal.SIGSTOP)
            try:
                alerts = wait_for("RemembrallStreamStalled firing", lambda: stall_alerts("firing"), 40, pipe_log)
                _mark(t_start, "stall alert firing")
                assert alerts[0]["labels"]["stream"] == "demo"
                wait_for("/readyz failing during the stall",
                         lambda: http_get(metrics_url + "/readyz")[0] == 503, 15, pipe_log)
                assert http_get(metrics_url + "/healthz")[0] == 200, "a stalled stage is alive: liveness holds"
            finally:
                os.kill(decode_pid, signal.SIGCONT)
        finally:
            stop_pipeline(pipeline, status_file)
            _mark(t_start, "pipeline stopped")
    elapsed = time.monotonic() - t_start
    print(f"end-to-end monitoring check took {elapsed:.1f} s")


def _send_garbage(ipc_path: Path) -> None:
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(f"ipc://{ipc_path}")
    sock.send_multipart([b"\xc1 not msgpack", b"junk"])
    sock.close()


def _check_panels(prom: Prometheus, stage_types: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    failures, optional = [], []
    for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
        needs = panel_needs(panel)
        required = needs <= stage_types
        for target in panel["targets"]:
            where = f"panel {panel['title']!r} {target['refId']}"
            try:
                result = prom.query(substitute(target["expr"]))
            except ValueError as exc:
                failures.append(f"{where}: invalid query: {exc}")
                continue
            if not required:
                optional.append(f"{where} (needs {', '.join(sorted(needs - stage_types))}): {len(result)} series")
                continue
            finite = [r for r in result if math.isfinite(float(r["value"][1]))]
            if not finite:
                failures.append(f"{where}: no data ({len(result)} series, none finite): {target['expr']}")
                continue
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                if not any(label in r["metric"] for r in finite):
                    failures.append(f"{where}: legend uses {{{{{label}}}}} but no series has that label (Prometheus drops empty labels, hence any)")
    print("panels not required from this pipeline:\n  " + "\n  ".join(optional))
    assert not failures, "\n".join(failures)
    assert len(optional) < 15, "most panels must be checked for data, not only for validity"


def _check_variables(prom: Prometheus) -> None:
    stages = set(prom.api("label/stage/values", **{"match[]": "remembrall_stage_up"}))
    assert {"sink", "infer", STAGE} <= stages, stages
    streams = set(prom.api("label/stream/values", **{"match[]": "remembrall_frames_total"}))
    assert "demo" in streams, streams


def _check_rules(prom: Prometheus) -> None:
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    names = {r["alert"] for g in shipped["groups"] for r in g["rules"]}

    def evaluated() -> dict[str, dict[str, Any]]:
        rules = {r["name"]: r for g in prom.api("rules")["groups"] if g["name"] != "test-fast" for r in g["rules"]}
        return rules if names <= set(rules) and all(r.get("lastEvaluation", "").startswith("2")
                                                    and not r["lastEvaluation"].startswith("0001")
                                                    for r in rules.values()) else {}

    rules = wait_for("every alert rule evaluated", evaluated, 15)
    for name in names:
        r = rules[name]
        assert r["health"] == "ok" and not r.get("lastError"), (name, r.get("lastError"))
        prom.query(r["query"])  # the expression itself is valid PromQL on this data
    firing = [a["labels"]["alertname"] for r in rules.values() for a in r.get("alerts", []) if a["state"] == "firing"]
    assert not firing, f"alerts firing on a healthy pipeline: {firing}"


def _check_status_command(out: Path) -> None:
    """``remembrall status`` is ``status_main`` (cli.py only forwards its arguments)."""
    from remembrall.monitoring.status import status_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # 5 s: on a loaded 2-core machine one infer batch of 16 can take several seconds
        rc = status_main(["--run-dir", str(out), "--interval", "5"])
    text = buf.getvalue()
    assert rc == 0, text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()[:1] and
            line.split()[0] in ("sink", "infer", STAGE)}
    assert set(rows) == {"sink", "infer", STAGE}, text
    assert all(r[2] == "running" for r in rows.values()), text
    assert rows[STAGE][4] == "1", f"the restart we caused is not reported:\n{text}"
    assert sum(float(r[5]) for r in rows.values()) > 0, f"no throughput reported:\n{text}"
    assert re.search(r"serving model version: \d+", text), text
