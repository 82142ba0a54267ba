#!/usr/bin/env python3
"""Generate ``dashboards/remembrall.json`` (the Grafana dashboard) from one readable table.

The JSON is what Grafana provisions; this script is its source, so a panel is a line here
instead of eighty lines of JSON. ``python deploy/grafana/build_dashboard.py`` rewrites the file,
``--check`` exits 1 when the committed file differs from what this script produces
(tests/test_monitoring_assets.py runs it).

Each panel's description ends with ``Needs: X.`` when the panel stays empty unless the pipeline
has feature X: a stage type (``select``, ``buffer``, ``label``, ``retrain``), ``labels``
(a stream that carries ground-truth labels, for online accuracy), ``brokers`` (sink.brokers) or
``remote`` (label.remote / retrain.remote, and the remembrall serve server itself). The operator reads why a
panel is empty; the end-to-end test reads which panels the running pipeline must fill.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "remembrall.json"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Label matchers for the template variables (multi-value variables expand to a regex). Series of
# the whole pipeline (replay buffer, retraining, served model, malformed drops) carry an empty
# stream label, so "|" keeps them whichever streams are selected.
SS = 'stage=~"$stage", stream=~"$stream|"'
S = 'stage=~"$stage"'
ST = 'stream=~"$stream|"'
RI = "$__rate_interval"

#: Frames emitted by source stages: the series that also have a remembrall_source_connected
#: series. This finds the source stages whatever they are named (decode-*, text-*).
FRAMES_IN = (f"rate(remembrall_frames_total{{{ST}}}[{RI}]) "
             "and on (job, instance, stage, stream) remembrall_source_connected")
#: Predictions written by the sink (one end-to-end latency observation per prediction).
FRAMES_OUT = f"rate(remembrall_end_to_end_latency_seconds_count{{{ST}}}[{RI}])"


def q(expr: str, legend: str = "") -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str, by: str, matchers: str, window: str = RI, label: str = "") -> list[dict[str, Any]]:
    out = []
    for qq in (0.5, 0.95):
        legend = (label + " " if label else "") + f"p{int(qq * 100)}"
        legend = "{{" + by.split(",")[0].strip() + "}} " + legend if by else legend
        group = f"{by}, le" if by else "le"
        out.append(q(f"histogram_quantile({qq}, sum by ({group}) (rate({metric}_bucket{{{matchers}}}[{window}])))",
                     legend))
    return out


# (row title, [(panel title, type, unit, description, [queries], width)]). Units are Grafana unit
# ids; an id Grafana does not know ("fps") is shown as a suffix.
ROWS: list[tuple[str, list[tuple[str, str, str, str, list[dict[str, Any]], int]]]] = [
    ("Overview", [
        ("Stages up", "stat", "none",
         "Stage processes the supervisor reports running.",
         [q(f"sum(remembrall_stage_up{{{S}}})", "up")], 4),
        ("Frames/s in", "stat", "fps",
         "Frames (or texts) the sources handed to the pipeline, all selected streams.",
         [q(f"sum({FRAMES_IN})", "in")], 4),
        ("Predictions/s out", "stat", "fps",
         "Predictions the sink wrote, all selected streams.",
         [q(f"sum({FRAMES_OUT})", "out")], 4),
        ("Serving model version", "stat", "none",
         "Version of the head infer serves (0 = the base model).",
         [q('max(remembrall_model_version{stage=~"infer.*"})', "version")], 4),
        ("Online accuracy", "stat", "percentunit",
         "Prequential accuracy of served predictions over the last window. Needs: labels.",
         [q(f"avg(remembrall_online_accuracy{{{SS}}})", "accuracy")], 4),
        ("Restarts in range", "stat", "none",
         "Stage restarts by the supervisor within the dashboard's time range.",
         [q(f"sum(increase(remembrall_stage_restarts_total{{{S}}}[$__range])) or vector(0)", "restarts")], 4),
    ]),
    ("Throughput", [
        ("Frames/s in and out per stream", "timeseries", "fps",
         "In: frames a source stage emitted. Out: predictions the sink wrote. A gap between them is "
         "frames dropped or still queued.",
         [q(f"sum by (stream) ({FRAMES_IN})", "{{stream}} in"),
          q(f"sum by (stream) ({FRAMES_OUT})", "{{stream}} out")], 12),
        ("Frames/s per stage", "timeseries", "fps",
         "Items each stage processed per second.",
         [q(f"sum by (stage) (rate(remembrall_frames_total{{{SS}}}[{RI}]))", "{{stage}}")], 12),
        ("Drops/s by reason", "timeseries", "cps",
         "Items dropped: backpressure (a live source outran the pipeline), malformed_* (bad input on a "
         "socket), decode_error, lost (sequence gaps at the sink), ...",
         [q(f"sum by (stage, stream, reason) (rate(remembrall_frames_dropped_total{{{SS}}}[{RI}]))",
            "{{stage}} {{stream}} {{reason}}")], 12),
        ("Decode errors/s", "timeseries", "cps",
         "Packets or frames a source could not decode.",
         [q(f"sum by (stage, stream) (rate(remembrall_decode_errors_total{{{SS}}}[{RI}]))",
            "{{stage}} {{stream}}")], 12),
    ]),
    ("Latency and queues", [
        ("Stage latency p50 / p95", "timeseries", "s",
         "Time a stage spends on one item (a batched stage reports its per-item share).",
         quantiles("remembrall_stage_latency_seconds", "stage", SS), 8),
        ("End-to-end latency p50 / p95", "timeseries", "s",
         "Ingest at the source to the prediction written by the sink.",
         quantiles("remembrall_end_to_end_latency_seconds", "stream", ST), 8),
        ("Queue depth", "timeseries", "none",
         "Items waiting in a stage's input queue. A queue that only grows means the stage is the bottleneck.",
         [q(f"sum by (stage, stream) (remembrall_queue_depth{{{SS}}})", "{{stage}} {{stream}}")], 8),
    ]),
    ("Learning", [
        ("Samples selected/s", "timeseries", "cps",
         "Samples the select stage kept for labelling. Needs: select.",
         [q(f"sum by (stream) (rate(remembrall_samples_selected_total{{{SS}}}[{RI}]))", "{{stream}}")], 8),
        ("Replay buffer size", "timeseries", "none",
         "Labelled samples held in the replay buffer. Needs: buffer.",
         [q(f"max by (stage, stream) (remembrall_buffer_size{{{SS}}})", "{{stage}}")], 8),
        ("Retraining runs", "timeseries", "none",
         "Retraining runs started in each 5 minutes. Needs: retrain.",
         [q(f"sum by (stage) (increase(remembrall_retrain_runs_total{{{SS}}}[5m]))", "{{stage}} runs/5m")], 8),
        ("Retraining run duration", "timeseries", "s",
         "Duration of retraining runs finished in the last 30 minutes: p50, p95 and mean. Needs: retrain.",
         quantiles("remembrall_retrain_seconds", "", SS, window="30m")
         + [q(f"sum(rate(remembrall_retrain_seconds_sum{{{SS}}}[30m])) / "
              f"sum(rate(remembrall_retrain_seconds_count{{{SS}}}[30m]))", "mean")], 8),
        ("Compute share used by retraining", "timeseries", "percentunit",
         "Share of GPU time (CPU time on a host without one) retraining used over its window; the arbiter "
         "holds it under retrain.share. Needs: retrain.",
         [q(f"max by (stage) (remembrall_gpu_share{{{SS}}})", "{{stage}}")], 8),
        ("Model version over time", "timeseries", "none",
         "Version of the head each stage serves; a step up is a hot-swap, a step down a rollback.",
         [q(f"max by (stage) (remembrall_model_version{{{SS}}})", "{{stage}}")], 8),
        ("Hot-swap pause p95", "timeseries", "s",
         "Time the serving loop paused to swap in a new model, p95 of every swap since the pipeline "
         "started (swaps are rare: a rate window would mostly be empty). Needs: retrain.",
         [q(f"histogram_quantile(0.95, sum by (stage, le) (remembrall_swap_seconds_bucket{{{SS}}}))",
            "{{stage}} p95")], 8),
        ("Online accuracy per stream", "timeseries", "percentunit",
         "Prequential accuracy of served predictions (running window) on streams with labels. Needs: labels.",
         [q(f"max by (stage, stream) (remembrall_online_accuracy{{{SS}}})", "{{stream}}")], 8),
    ]),
    ("Memory and zoo", [
        ("Episodic memory items", "timeseries", "none",
         "Labelled items infer's episodic memory holds, per modality; consolidation prunes what the head "
         "learned. Needs: retrain.",
         [q(f"max by (stage, modality) (remembrall_memory_items{{{S}}})", "{{modality}}")], 8),
        ("Memory hits and changed predictions", "timeseries", "percentunit",
         "Share of predictions the memory's vote took part in (hits) and share whose top class it changed. "
         "Needs: retrain.",
         [q(f"sum by (modality) (rate(remembrall_memory_hits_total{{{S}}}[{RI}])) / "
            f"sum by (modality) (rate(remembrall_memory_queries_total{{{S}}}[{RI}]))", "{{modality}} hits"),
          q(f"sum by (modality) (rate(remembrall_memory_changed_total{{{S}}}[{RI}])) / "
            f"sum by (modality) (rate(remembrall_memory_queries_total{{{S}}}[{RI}]))", "{{modality}} changed")], 8),
        ("Memory blend weight", "timeseries", "none",
         "Calibrated weight of the memory's vote (0: the head alone was better on the newest labels). "
         "Needs: retrain.",
         [q(f"max by (modality) (remembrall_memory_blend_weight{{{S}}})", "{{modality}}")], 8),
        ("Memory writes", "timeseries", "none",
         "Labels offered to the memory in each 5 minutes: stored, duplicate (not stored twice), evicted. "
         "Needs: retrain.",
         [q(f"sum by (modality, outcome) (increase(remembrall_memory_writes_total{{{S}}}[5m]))",
            "{{modality}} {{outcome}}")], 8),
        ("Consolidations and pruned memories", "timeseries", "none",
         "Sleep consolidations in each 30 minutes (accepted or rejected heads) and memories pruned after an "
         "accepted one. Needs: retrain.",
         [q(f"sum by (modality, outcome) (increase(remembrall_consolidations_total{{{S}}}[30m]))",
            "{{modality}} {{outcome}}"),
          q(f"sum by (modality) (increase(remembrall_memory_pruned_total{{{S}}}[30m]))", "{{modality}} pruned")],
         8),
        ("Zoo specialists and resident", "timeseries", "none",
         "Specialists kept in the zoo (on disk) and those resident on infer's device (at most zoo.resident). "
         "Needs: retrain.",
         [q(f"max by (modality) (remembrall_zoo_specialists{{{S}}})", "{{modality}} in zoo"),
          q(f"max by (modality) (remembrall_zoo_resident{{{S}}})", "{{modality}} resident")], 8),
        ("Zoo recalls", "timeseries", "none",
         "Specialists recalled when their scene returned, in each 30 minutes, and recalls that beat the head "
         "they replaced on the labels that followed. Needs: retrain.",
         [q(f"sum by (modality) (increase(remembrall_zoo_recalls_total{{{S}}}[30m]))", "{{modality}} recalls"),
          q(f"sum by (modality) (increase(remembrall_zoo_recall_hits_total{{{S}}}[30m]))", "{{modality}} hits")],
         12),
        ("Device memory", "timeseries", "bytes",
         "Bytes infer holds on its device for heads, resident specialists and the memory matrix: flat however "
         "large the zoo grows. Needs: retrain.",
         [q(f"max by (modality) (remembrall_device_memory_bytes{{{S}}})", "{{modality}}")], 12),
    ]),
    ("Cost", [
        ("CPU per item", "timeseries", "ms",
         "CPU milliseconds each stage spends per item it handles (user + system, all its threads): where "
         "the device's cores go.",
         [q(f"1000 * sum by (stage) (rate(remembrall_stage_cpu_seconds_total{{{S}}}[{RI}])) / "
            f"sum by (stage) (rate(remembrall_frames_total{{{S}}}[{RI}]))", "{{stage}}")], 8),
        ("Stage memory", "timeseries", "bytes",
         "Resident memory of each stage process (and the supervisor, which serves metrics and the UI); a "
         "line that only climbs is a leak.",
         [q(f"max by (stage) (remembrall_stage_rss_bytes{{{S}}})", "{{stage}}")], 8),
        ("Model bytes", "timeseries", "bytes",
         "What the models occupy in infer: the backbone's weights, the heads it holds, the episodic memory "
         "and the zoo's index.",
         [q("max by (part) (remembrall_model_bytes)", "{{part}}")], 8),
    ]),
    ("Health", [
        ("Stage up", "state-timeline", "none",
         "1 while a stage process runs (set by the supervisor).",
         [q(f"max by (stage) (remembrall_stage_up{{{S}}})", "{{stage}}")], 8),
        ("Stage restarts", "timeseries", "none",
         "Restarts by the supervisor since it started; a rising line is a crash loop.",
         # a stage that never restarted may have no counter yet: show it at 0
         [q(f"max by (stage) (remembrall_stage_restarts_total{{{S}}}) "
            f"or max by (stage) (remembrall_stage_up{{{S}}}) * 0", "{{stage}}")], 8),
        ("Source connected", "state-timeline", "none",
         "1 while a source delivers, 0 while it is (re)connecting.",
         [q(f"max by (stage, stream) (remembrall_source_connected{{{SS}}})", "{{stream}}")], 8),
        ("Source reconnects", "timeseries", "none",
         "Reconnection attempts to live sources in each 5 minutes.",
         [q(f"sum by (stage, stream) (increase(remembrall_source_reconnects_total{{{SS}}}[5m]))",
            "{{stream}}")], 12),
        ("Metrics endpoint scraped", "state-timeline", "none",
         "Prometheus's own view: 1 while it can scrape the pipeline's /metrics.",
         [q('up{job="remembrall"}', "{{instance}}")], 12),
        ("Broker lines/s", "timeseries", "cps",
         "Lines each broker of sink.brokers confirmed per second, and lines dropped by reason: buffer_full "
         "(unreachable longer than sink.broker_buffer lasts), refused (credentials), too_large, error, "
         "shutdown. Needs: brokers.",
         [q(f"sum by (broker) (rate(remembrall_broker_published_total{{{S}}}[{RI}]))", "{{broker}} sent"),
          q(f"sum by (broker, reason) (rate(remembrall_broker_dropped_total{{{S}}}[{RI}]))",
            "{{broker}} dropped {{reason}}")], 8),
        ("Broker lines waiting", "timeseries", "none",
         "Lines queued in the sink for each broker: they grow while it is unreachable and are sent after "
         "it comes back, up to sink.broker_buffer. Needs: brokers.",
         [q(f"max by (broker) (remembrall_broker_buffered{{{S}}})", "{{broker}}")], 8),
        ("Broker connected", "state-timeline", "none",
         "1 while the sink is connected to the broker, 0 while it reconnects (backoff up to 30 s) or is "
         "refused. Needs: brokers.",
         [q(f"max by (broker) (remembrall_broker_connected{{{S}}})", "{{broker}}")], 8),
        ("Remote server up", "state-timeline", "none",
         "1 while the remembrall serve server of label.remote / retrain.remote answers the stage, 0 while it "
         "is unreachable, refuses this pipeline's key, or is silent. Inference goes on either way. Needs: remote.",
         [q(f"max by (stage) (remembrall_remote_up{{{S}}})", "{{stage}}")], 8),
        ("Work waiting for the remote server", "timeseries", "none",
         "Samples the label stage and runs the retrain stage hold for the server, and what they sent again "
         "per 5 minutes (timeout, restarted, busy, missing_rows). Needs: remote.",
         [q(f"max by (stage) (remembrall_remote_pending{{{S}}})", "{{stage}} waiting"),
          q(f"sum by (stage, reason) (increase(remembrall_remote_resent_total{{{S}}}[5m]))",
            "{{stage}} resent ({{reason}})")], 8),
        ("Fleet server: labels, runs, refusals", "timeseries", "cps",
         "On a remembrall serve server: labels answered and training runs finished per pipeline, and peers "
         "refused (unknown_key: not in serve.allowed_keys; handshake: a wrong server key). Needs: remote.",
         [q(f"sum by (client) (rate(remembrall_label_server_requests_total{{outcome=\"labelled\"}}[{RI}]))",
            "{{client}} labels"),
          q(f"sum by (client) (rate(remembrall_train_server_jobs_total{{outcome=\"trained\"}}[{RI}]))",
            "{{client}} runs"),
          q(f"sum by (reason) (rate(remembrall_curve_refused_total[{RI}]))", "refused ({{reason}})")], 8),
    ]),
]


def panel(pid: int, title: str, type_: str, unit: str, desc: str, queries: list[dict[str, Any]],
          x: int, y: int, w: int, h: int) -> dict[str, Any]:
    p: dict[str, Any] = {
        "id": pid, "type": type_, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [dict(qq, refId=chr(ord("A") + i), datasource=DS) for i, qq in enumerate(queries)],
    }
    if type_ == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    elif type_ == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "showPoints": "never", "spanNulls": False}
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif type_ == "state-timeline":
        p["fieldConfig"]["defaults"]["mappings"] = [
            {"type": "value", "options": {"0": {"text": "down", "color": "red"},
                                          "1": {"text": "up", "color": "green"}}}]
        p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
        p["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}
        p["options"] = {"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}}
    return p


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "regex": "", "sort": 1, "hide": 0,
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y, x = pid + 1, y + 1, 0
        h = 4 if all(p[1] == "stat" for p in row_panels) else 8
        for title, type_, unit, desc, queries, w in row_panels:
            if x + w > 24:
                x, y = 0, y + h
            panels.append(panel(pid, title, type_, unit, desc, queries, x, y, w, h))
            pid, x = pid + 1, x + w
        y += h
    return {
        "uid": "remembrall-pipeline",
        "title": "remembrall pipeline",
        "description": "Per stream and per stage: throughput, drops, latency, queues, learning, health.",
        "tags": ["remembrall"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            variable("stream", "Stream", "label_values(remembrall_frames_total, stream)"),
            variable("stage", "Stage", "label_values(remembrall_stage_up, stage)"),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT} ({sum(p['type'] != 'row' for p in build()['panels'])} panels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
