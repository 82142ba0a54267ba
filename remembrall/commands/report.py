"""``remembrall report OUT [--html FILE]``: a finished (or running) run's Learning page as one
self-contained HTML file — charts, tables and their data inline, nothing fetched when it is
opened — so a benchmark or a night's run can be mailed or archived. A short text summary goes to
stdout. Exit status 2 when OUT holds no run.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from remembrall.ui.learning import LearningLog
from remembrall.ui.pages import PAGES, STATIC, render


class ReportError(RuntimeError):
    """Nothing to report on (the message says what is missing)."""


def _inline_json(data: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_html(summary: dict[str, Any], title: str) -> str:
    """The Learning page with its styles, scripts and ``summary`` inlined."""

    def style(name: str) -> str:
        return "<style>\n" + (STATIC / name).read_text(encoding="utf-8") + "\n</style>"

    def script(name: str) -> str:
        return "<script>\n" + (STATIC / name).read_text(encoding="utf-8").replace("</script", "<\\/script") + "\n</script>"

    learning = next(p for p in PAGES if p.name == "learning")
    return render(learning, style=style, script=script, title=f"remembrall report · {html.escape(title)}",
                  nav=html.escape(title),
                  status=f'<span class="pulse">report written {time.strftime("%Y-%m-%d %H:%M")}</span>',
                  preamble=f"<script>window.REMEMBRALL_LEARNING = {_inline_json(summary)};</script>\n")


def build_report(out: Path, predictions: str = "predictions.jsonl") -> dict[str, Any]:
    if not out.is_dir():
        raise ReportError(f"{out}: no such directory (give the run's --out folder)")
    log = LearningLog(out, predictions)
    if not log.events_path.exists() and not log.predictions_path.exists():
        raise ReportError(f"{out}: neither events.jsonl nor {predictions} is here; is this a run's --out folder?")
    log.refresh()
    return log.summary()


def text_summary(summary: dict[str, Any]) -> str:
    lines = [f"predictions {summary['predictions']}, labels used {summary['labels_used']}, "
             f"retraining runs {summary['runs_accepted']}/{summary['runs_total']} accepted "
             f"({summary['retrain_compute_s']:.1f} s compute), model swaps {len(summary['swaps'])}"]
    for stream, points in summary["accuracy"].items():
        if points:
            lines.append(f"{stream}: accuracy {points[0][1]:.3f} at the start, {points[-1][1]:.3f} at the end "
                         "(rolling over labelled predictions)")
    if summary["stop_reasons"]:
        lines.append("runs stopped by: " + ", ".join(f"{k} {v}" for k, v in summary["stop_reasons"].items()))
    return "\n".join(lines)


def report_main(out: str, html_path: str | None) -> int:
    """Entry point of ``remembrall report``; returns the exit status."""
    import sys

    from remembrall.atomic import atomic_write_bytes

    run = Path(out)
    try:
        summary = build_report(run)
    except ReportError as exc:
        print(f"remembrall report: {exc}", file=sys.stderr)
        return 2
    target = Path(html_path) if html_path else run / "report.html"
    atomic_write_bytes(target, render_html(summary, str(run.resolve())).encode("utf-8"))
    print(text_summary(summary))
    print(f"report: {target}")
    return 0
