"""``remembrall`` command line: run a pipeline, fit a base head, show a running pipeline's status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from remembrall.config import Config, ConfigError, load_config, parse_overrides
from remembrall.logs import setup_logging
from remembrall.packaged_configs import resolve, write_copies

log = logging.getLogger("remembrall")


def _preflight(cfg: Config) -> None:
    """Fail before starting any process on what is certainly wrong (a missing input file)."""
    from remembrall.io.errors import SourceError
    from remembrall.io.sources import parse_source

    for src in cfg.sources:
        try:
            parsed = parse_source(src)
        except SourceError as exc:
            raise ConfigError(f"source {src.id!r}: {exc}") from None
        if parsed.must_exist and not parsed.path.exists() and src.live != "yes":
            raise ConfigError(f"source {src.id!r}: {parsed.path} does not exist (check the path given with --source)")


def load_run_config(args: argparse.Namespace) -> Config:
    overrides = parse_overrides(args.set or [])
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics.port"] = args.metrics_port
    if getattr(args, "ui_port", None) is not None:
        overrides["ui.port"] = args.ui_port
    if getattr(args, "out", None):
        overrides["out"] = args.out
    try:
        path = resolve(args.config)  # a file, or a packaged name: remembrall run demo
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    cfg = load_config(path, overrides)
    if getattr(args, "source", None):
        cfg.sources[0].uri = args.source
    return cfg


def summarize(predictions: Path) -> dict[str, Any]:
    """Per-stream counts, online accuracy (where labels exist) and model versions of a run."""
    streams: dict[str, dict[str, Any]] = {}
    if not predictions.is_file():
        return {"streams": streams}
    with predictions.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            s = streams.setdefault(rec.get("stream", ""), {"predictions": 0, "labelled": 0, "correct": 0,
                                                           "versions": Counter()})
            s["predictions"] += 1
            s["versions"][rec.get("model_version")] += 1
            if rec.get("label") is not None:
                s["labelled"] += 1
                s["correct"] += int(rec.get("pred") == rec["label"])
    for s in streams.values():
        s["model_versions"] = sorted(v for v in s.pop("versions") if v is not None)
        if s["labelled"]:
            s["online_accuracy"] = s["correct"] / s["labelled"]
    return {"streams": streams}


def _status_line(cfg: Config, out_dir: Path, metrics_dir: str, ui_url: str | None) -> Any:
    """On a terminal (and unless JSON logs were asked for): live status lines under the logs."""
    if not sys.stderr.isatty() or os.environ.get("REMEMBRALL_LOG_FORMAT", "").lower() == "json":
        return None
    from remembrall.io.sources import detect_modality
    from remembrall.ui.learning import LearningLog
    from remembrall.ui.overview import MetricsView
    from remembrall.ui.terminal import StatusLine

    streams = {src.id: detect_modality(src) for src in cfg.sources}
    return StatusLine(streams, MetricsView(metrics_dir), LearningLog(out_dir, cfg.sink.path), ui_url)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    setup_logging(args.log_level or cfg.log_level, component="supervisor")
    _preflight(cfg)
    out_dir = Path(cfg.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    from remembrall.pipeline.rundir import RunDir, remove_stale_run_dirs

    base = cfg.run_dir or os.environ.get("REMEMBRALL_RUN_DIR") or tempfile.gettempdir()
    run_dir = RunDir(base)
    remove_stale_run_dirs(base)
    sock_dir = run_dir.path
    metrics_dir = sock_dir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from remembrall.pipeline.supervisor import Supervisor  # after the env var: metrics are per-process files

    try:
        services: list[Any] = []
        ui = None
        if cfg.ui.enabled:
            from remembrall.ui.server import UIServer

            ui = UIServer(cfg, out_dir, sock_dir, str(metrics_dir))
            services.append(ui)
        status_line = _status_line(cfg, out_dir, str(metrics_dir), ui.url if ui else None)
        if status_line is not None:
            services.append(status_line)
            logging.getLogger().handlers[:] = [status_line.logging_handler()]
        sup = Supervisor(cfg, out_dir, sock_dir, duration=args.duration, metrics_port=cfg.metrics.port,
                         services=services, stage_output=status_line.print_line if status_line else None)
        rc = sup.run()
    finally:
        run_dir.remove()
    summary = summarize(out_dir / cfg.sink.path)
    summary["exit_status"] = rc
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    for stream, s in sorted(summary["streams"].items()):
        acc = f", online accuracy {s['online_accuracy']:.3f} over {s['labelled']} labelled" if "online_accuracy" in s else ""
        versions = s["model_versions"]
        print(f"{stream}: {s['predictions']} predictions{acc}, model versions {versions[:1] + versions[-1:] if len(versions) > 2 else versions}")
    print(f"predictions: {out_dir / cfg.sink.path}")
    return rc


def cmd_fit_base(args: argparse.Namespace) -> int:
    from remembrall.commands.fit_base import fit_base_main

    cfg = load_run_config(args)
    setup_logging(args.log_level or cfg.log_level, component="fit-base")
    return fit_base_main(cfg, args)


def cmd_ctl(args: argparse.Namespace) -> int:
    """``remembrall ctl`` (and ``remembrall rollback``): commands to a running pipeline's memory and zoo."""
    from remembrall.commands.ctl import CtlError, ctl_main

    overrides = parse_overrides(args.set or [])
    cfg = load_config(resolve(args.config) if args.config else None, overrides)
    try:
        return ctl_main(cfg, args)
    except CtlError as exc:
        print(f"remembrall: {exc}", file=sys.stderr)
        return 2


def cmd_export(args: argparse.Namespace) -> int:
    """``remembrall export``: the served vision model as ONNX."""
    from remembrall.commands.export import export_main

    cfg = load_config(resolve(args.config) if args.config else None, parse_overrides(args.set or []))
    return export_main(cfg, args)


def cmd_report(args: argparse.Namespace) -> int:
    """``remembrall report OUT [--html FILE]``: the Learning page of a run as one HTML file."""
    from remembrall.commands.report import report_main

    return report_main(args.out_dir, args.html)


def cmd_serve(args: argparse.Namespace) -> int:
    """``remembrall serve CONFIG``: labels (a teacher or humans) and training a fleet of pipelines shares."""
    from remembrall.commands.serve import serve_main

    cfg = load_run_config(args)
    setup_logging(args.log_level or cfg.log_level, component="serve")
    return serve_main(cfg)


def cmd_keys(args: argparse.Namespace) -> int:
    from remembrall.commands.keys import keys_main

    return keys_main(args)


def cmd_init(args: argparse.Namespace) -> int:
    """Write editable copies of the packaged configs (a wheel install has no configs/ folder)."""
    # an existing file (FileExistsError) or an unknown name (FileNotFoundError): main() exits 2
    written = write_copies(Path(args.directory), args.names or None, overwrite=args.force)
    for path in written:
        print(f"wrote {path}")
    example = next((p for p in written if p.stem == "demo"), written[0] if written else None)
    if example is not None:
        print(f"edit one, then run it: remembrall run {example}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remembrall", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="YAML config: a path (my.yaml) or a packaged name (demo, default, text, "
                        "jetson-orin-nano, …; remembrall init DIR writes editable copies)")
        sp.add_argument("--source", help="input URI: a file, rtsp://…, /dev/video0, builtin:NAME, a manifest.jsonl …")
        sp.add_argument("--out", help="output directory (predictions.jsonl, models, buffer, status.json)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    run = sub.add_parser("run", help="run a pipeline")
    common(run)
    run.add_argument("--duration", type=float, help="stop the sources after this many seconds, then drain")
    run.add_argument("--metrics-port", type=int, help="Prometheus endpoint port (0 = any free port)")
    run.add_argument("--ui-port", type=int, help="browser UI port (0 = any free port; ui.enabled: false turns it off)")
    run.set_defaults(func=cmd_run)

    fit = sub.add_parser("fit-base", help="train the base head for your classes from annotated footage")
    common(fit)
    fit.add_argument("--output", help="where to write the base head checkpoint (default: infer.head of the config)")
    fit.set_defaults(func=cmd_fit_base)

    init = sub.add_parser("init", help="write editable copies of the packaged configs into a folder")
    init.add_argument("directory", metavar="DIR", help="folder to write NAME.yaml files into (created)")
    init.add_argument("names", nargs="*", metavar="NAME", help="packaged configs to copy (default: all)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=cmd_init)

    def control(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, help="the pipeline's output directory")
        sp.add_argument("--config", help="the run's config, when it moved memory/zoo/buffer paths")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.add_argument("--modality", choices=["vision", "text"])

    rb = sub.add_parser("rollback", help="serve the previous specialized model again (a running pipeline)")
    control(rb)
    rb.add_argument("--to-version", type=int)
    rb.set_defaults(func=cmd_ctl, verb="rollback")

    ctl = sub.add_parser("ctl", help="memory and zoo of a running pipeline: stats, sleep, forget, recall, rollback")
    control(ctl)
    verbs = ctl.add_subparsers(dest="verb", required=True)
    verbs.add_parser("stats", help="memory, buffer and zoo sizes, blend weight, specialists (JSON)")
    verbs.add_parser("sleep", help="consolidate the episodic memory into the head now")
    forget = verbs.add_parser("forget", help="remove a stream's memories, buffer samples and its own specialists")
    forget.add_argument("--stream", required=True)
    recall = verbs.add_parser("recall", help="serve a specialist from the zoo")
    recall.add_argument("version", type=int)
    back = verbs.add_parser("rollback", help="serve the previous specialized model again")
    back.add_argument("--to-version", type=int)
    ctl.set_defaults(func=cmd_ctl)

    export = sub.add_parser("export", help="the served vision model (backbone + head, and the head alone) as ONNX")
    export.add_argument("--out", required=True, help="the run's output directory")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--version", type=int, help="head version (default: the one serving, else the newest)")
    export.add_argument("--dest", help="folder for the files (default: OUT/export/vision-vN)")
    export.add_argument("--config", help="the run's config (its infer.image_size is the model's input size)")
    export.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    export.set_defaults(func=cmd_export)

    report = sub.add_parser("report", help="a run's Learning page (accuracy, models, labels, runs) as one HTML file")
    report.add_argument("out_dir", metavar="OUT", help="the run's output directory")
    report.add_argument("--html", metavar="FILE", help="where to write it (default: OUT/report.html)")
    report.set_defaults(func=cmd_report)

    serve = sub.add_parser("serve", help="serve labels (teacher or humans) and training to a fleet of pipelines over CURVE")
    common(serve)
    serve.add_argument("--metrics-port", type=int, help="Prometheus endpoint port (0 = any free port)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="CURVE key pairs for stages on other hosts")
    kverbs = keys.add_subparsers(dest="keys_verb", required=True)
    gen = kverbs.add_parser("generate", help="write DIR/NAME.key (public) and DIR/NAME.key_secret")
    gen.add_argument("directory", metavar="DIR")
    gen.add_argument("names", nargs="+", metavar="NAME")
    show = kverbs.add_parser("show", help="print a key file's public key")
    show.add_argument("file", metavar="FILE")
    keys.set_defaults(func=cmd_keys)

    # handled in main() before parsing; listed here so --help shows it
    sub.add_parser("status", help="show a running pipeline's stages, restarts, throughput, model version "
                   "(remembrall status --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # its options belong to status_main, not to this parser
        from remembrall.monitoring.status import status_main

        return status_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        setup_logging("error")
        print(f"remembrall: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"remembrall: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
