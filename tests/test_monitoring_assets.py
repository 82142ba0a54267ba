"""Static checks of what ships in deploy/: the dashboard, scrape config, alert rules, systemd unit,
docker-compose file and the Jetson profile.

The central check: every metric a dashboard panel or alert rule names must be one the code
exports, with the suffix Prometheus actually sees (``_total``, ``_bucket`` ...), and every label
it filters or groups by must exist. The exported names come from a real multiprocess exposition
of ``remembrall/monitoring/metrics.py``, produced the way the supervisor's endpoint produces it.
``tests/test_prometheus_e2e.py`` then runs the same expressions against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "remembrall.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

#: Labels Prometheus attaches to every scraped series (job/instance) or our scrape config adds.
TARGET_LABELS = {"job", "instance", "host"}
#: Features a panel may declare with "Needs: ..." in its description.
FEATURES = {"select", "label", "buffer", "retrain", "labels", "brokers", "remote"}
#: Metrics a panel may use that Prometheus itself produces.
PROMETHEUS_METRICS = {"up"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (apt-get install prometheus)")

_EXPOSE = r"""
import os, sys, tempfile, json
d = tempfile.mkdtemp()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from remembrall.monitoring import metrics
for obj in vars(metrics).values():
    if isinstance(obj, MetricWrapperBase):
        child = obj.labels(*["x"] * len(obj._labelnames)) if obj._labelnames else obj
        {"counter": lambda: child.inc(), "gauge": lambda: child.set(1),
         "histogram": lambda: child.observe(0.1)}[obj._type]()
reg = CollectorRegistry()
MultiProcessCollector(reg, d)
out = {}
for fam in text_string_to_metric_families(generate_latest(reg).decode()):
    for s in fam.samples:
        out.setdefault(s.name, set()).update(s.labels)
print(json.dumps({k: sorted(v) for k, v in out.items()}))
"""


@lru_cache(maxsize=1)
def exposed() -> dict[str, frozenset[str]]:
    """Sample name -> label names, as the supervisor's multiprocess endpoint exposes them."""
    res = subprocess.run([sys.executable, "-c", _EXPOSE], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    return {k: frozenset(v) for k, v in json.loads(res.stdout).items()}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, template variable query and alert rule."""
    out = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"])
            assert m, f"variable {v['name']}: expected label_values(METRIC, LABEL), got {v['definition']}"
            out.append((f"variable {v['name']}", f"{m.group(1)}{{{m.group(2)}!=\"\"}}"))
    out += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    return out


_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def problems(where: str, expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """What in ``expr`` refers to a metric or label the code does not export."""
    found = []
    for name in set(re.findall(r"\bremembrall_[a-zA-Z0-9_]+", expr)):
        if name not in known:
            found.append(f"{where}: metric {name} is not exported (known: {', '.join(sorted(known))})")
    for name, body in _SELECTOR.findall(expr):
        if name.startswith("remembrall_") and name not in known:
            continue  # reported above
        labels = known.get(name)
        if labels is None:
            if name not in PROMETHEUS_METRICS:
                found.append(f"{where}: selector on unknown metric {name}")
            continue
        for label in _MATCHER_LABEL.findall(body):
            if label not in labels | TARGET_LABELS:
                found.append(f"{where}: {name} has no label {label!r} (it has {', '.join(sorted(labels))})")
    all_labels = set().union(*known.values()) | TARGET_LABELS
    for group in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in all_labels:
                found.append(f"{where}: groups by label {label!r} that no metric has")
    return found


# ----------------------------------------------------------------------------------- dashboard
def test_dashboard_is_generated_from_its_source() -> None:
    res = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "build_dashboard.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] and 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("stream", "stage"):
        v = variables[name]
        assert v["type"] == "query" and v["definition"].startswith("label_values(")
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24, p["title"]
    titles = [p["title"] for p in panels()]
    assert len(titles) == len(set(titles)), "panel titles must be unique (the e2e test reports by title)"


def test_every_panel_has_a_query_and_the_datasource_variable() -> None:
    assert len(panels()) >= 20
    for p in panels():
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"panel {p['title']!r} target {t.get('refId')} has no expr"
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_panel_needs_name_known_features() -> None:
    for p in panels():
        m = re.search(r"Needs: ([^.]+)\.", p.get("description", ""))
        if m:
            needs = {x.strip() for x in m.group(1).split(",")}
            assert needs <= FEATURES, f"panel {p['title']!r}: unknown features {needs - FEATURES}"


def test_dashboard_covers_the_issue() -> None:
    """Per stream and per stage: every metric of DESIGN.md §6 appears on some panel."""
    text = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for metric in ("frames_total", "frames_dropped_total", "stage_latency_seconds_bucket",
                   "end_to_end_latency_seconds_bucket", "queue_depth", "samples_selected_total",
                   "buffer_size", "retrain_runs_total", "retrain_seconds_bucket", "gpu_share",
                   "model_version", "online_accuracy", "swap_seconds_bucket", "stage_up",
                   "stage_restarts_total", "source_connected", "source_reconnects_total",
                   # issue 9: memory and zoo
                   "memory_items", "memory_hits_total", "memory_changed_total", "memory_queries_total",
                   "memory_writes_total", "memory_blend_weight", "consolidations_total", "memory_pruned_total",
                   "zoo_specialists", "zoo_resident", "zoo_recalls_total", "zoo_recall_hits_total",
                   "device_memory_bytes"):
        assert f"remembrall_{metric}" in text, metric


# ------------------------------------------------------------------- names against the code
def test_every_referenced_metric_and_label_is_exported() -> None:
    known = exposed()
    assert "remembrall_frames_total" in known and "remembrall_stage_latency_seconds_bucket" in known
    assert "le" in known["remembrall_stage_latency_seconds_bucket"]
    found = [p for where, expr in all_expressions() for p in problems(where, expr, known)]
    assert not found, "\n".join(found)


def test_the_name_check_catches_mistakes() -> None:
    known = exposed()
    bad = 'sum by (stram) (rate(remembrall_frames{stage="x"}[1m])) + remembrall_frame_total{reson="x"}'
    found = problems("t", bad, known)
    assert any("remembrall_frames is not exported" in f for f in found)
    assert any("remembrall_frame_total is not exported" in f for f in found)
    assert any("'stram'" in f for f in found)
    assert problems("t", 'remembrall_stage_up{stream="x"}', known)  # stage_up has no stream label
    assert not problems("t", 'sum by (stage) (remembrall_stage_up{stage=~".*", job="remembrall"})', known)


# ---------------------------------------------------------------------------- promtool
@needs_promtool
def test_promtool_check_config_and_rules() -> None:
    for args in (["check", "config", str(PROM_CONFIG)], ["check", "rules", str(ALERTS)]):
        res = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_alert_rules_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: when each alert fires and when it must stay quiet."""
    res = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_alerts_cover_the_issue() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert {"RemembrallStreamStalled", "RemembrallDropsHigh", "RemembrallStageRestartLoop",
            "RemembrallAccuracyFalling", "RemembrallSourceDisconnected"} <= names
    for r in alert_rules():
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


# ------------------------------------------------------------- files that must agree
def test_scrape_target_matches_the_configs_metrics_port() -> None:
    from remembrall.config import load_config

    prom = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "remembrall"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert prom["rule_files"] == ["alerts.yml"]
    for name in ("default.yaml", "jetson-orin-nano.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert f"{cfg.metrics.host}:{cfg.metrics.port}" in targets, name


def test_docker_compose_mounts_what_grafana_and_prometheus_read() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = doc["services"]
    mounts = {}
    for name, svc in services.items():
        assert svc.get("network_mode") == "host", f"{name}: the pipeline's metrics are on the host's loopback"
        assert ":" in svc["image"] and not svc["image"].endswith(":latest"), f"{name}: pin the image"
        for vol in svc.get("volumes", []):
            src, target = vol.split(":")[:2]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: mounts missing {src}"
                mounts[target] = DEPLOY / src
    prom_args = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_args
    assert (mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    listen = next(a for a in prom_args if a.startswith("--web.listen-address="))
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text(encoding="utf-8"))
    assert ds["datasources"][0]["url"] == "http://" + listen.split("=", 1)[1]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/remembrall.yaml").read_text(encoding="utf-8"))
    path = provider["providers"][0]["options"]["path"]
    assert (mounts[path] / "remembrall.json").is_file(), "the dashboard provider must read the mounted dashboards"
    assert (mounts["/etc/grafana/provisioning"] / "datasources").is_dir()


def test_systemd_unit(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "remembrall.service").read_text(encoding="utf-8")
    settings = [line.strip() for line in unit.splitlines() if line.strip() and not line.startswith("#")]
    for needed in ("Restart=on-failure", "RuntimeDirectory=remembrall", "StateDirectory=remembrall",
                   "User=remembrall", "Environment=REMEMBRALL_LOG_FORMAT=json",
                   "Environment=REMEMBRALL_RUN_DIR=/run/remembrall", "DeviceAllow=char-nvidia* rw",
                   "DeviceAllow=char-video4linux rw", "KillMode=mixed"):
        assert needed in settings, needed
    assert "PrivateDevices=yes" not in settings, "PrivateDevices hides the GPU"
    assert "MemoryDenyWriteExecute=yes" not in settings, "CUDA/torch JIT need executable memory"
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # verify needs an existing executable; the real one lives in /opt on the device
    copy = tmp_path / "remembrall.service"
    copy.write_text(unit.replace("/opt/remembrall/venv/bin/remembrall", "/bin/true"), encoding="utf-8")
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if str(copy) in line]
    assert res.returncode == 0 and not complaints, "\n".join(complaints) or res.stderr


def test_jetson_profile_validates() -> None:
    from remembrall.config import load_config

    cfg = load_config(ROOT / "configs" / "jetson-orin-nano.yaml")
    assert cfg.infer.device == "cuda" and cfg.infer.half == "yes"
    assert cfg.decode.width == cfg.decode.height == cfg.infer.image_size
    assert cfg.retrain.share == pytest.approx(0.3)
    # a frame queued on each edge stays small next to 8 GB of shared memory
    frame = cfg.decode.width * cfg.decode.height * 3
    assert cfg.transport.hwm * frame < 16 << 20 and frame < cfg.transport.max_message_bytes
