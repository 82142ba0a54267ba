"""``remembrall export --out DIR --format onnx [--version N] [--dest PATH]``: a run's specialized
vision model as ONNX — the backbone with the served head (``model.onnx``: uint8 frames in,
probabilities and embedding out) and the head alone (``head.onnx``) — with class names, version
and preprocessing in each file's metadata, checked against PyTorch before it is called done.
Exit status 2 when there is nothing to export (no run, no such version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from remembrall.config import Config
from remembrall.models.heads import CheckpointError, load_head
from remembrall.models.registry import ModelRegistry

#: largest difference in probability allowed between ONNX Runtime and PyTorch
TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """Nothing to export; the message says why."""


def pick_head(out: Path, version: int | None) -> tuple[Any, Any]:
    """The head to export: ``version``, else the one serving (``current-vision.json``), else the newest."""
    models = out / "models"
    if not models.is_dir():
        raise ExportError(f"{out}: no models/ folder (give a learning run's --out folder)")
    registry = ModelRegistry(models, "vision")
    heads = registry.versions()
    if not heads:
        raise ExportError(f"{models}: no specialized vision head yet (the run has not retrained)")
    if version is None:
        current = registry.read_current()
        version = current if current in heads else max(heads)
    if version not in heads:
        raise ExportError(f"no vision head v{version} in {models} (there are: {', '.join(map(str, sorted(heads)))})")
    try:
        return load_head(heads[version])
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None


def export_main(cfg: Config, args: Any) -> int:
    from remembrall.models.onnx_export import check_against_torch, export_vision

    out = Path(args.out)
    try:
        head, meta = pick_head(out, args.version)
    except ExportError as exc:
        print(f"remembrall export: {exc}", file=sys.stderr)
        return 2
    dest = Path(args.dest) if args.dest else out / "export" / f"vision-v{meta.version}"
    size = cfg.infer.image_size
    files = export_vision(dest, head, meta, size)
    diff = check_against_torch(files["model"], head, size)
    if diff > TOLERANCE:
        print(f"remembrall export: ONNX Runtime and PyTorch disagree by {diff:.2e} (> {TOLERANCE}); "
              f"the files in {dest} should not be trusted", file=sys.stderr)
        return 1
    print(json.dumps({"version": meta.version, "classes": head.classes, "image_size": size,
                      "max_probability_difference": diff, **{k: str(v) for k, v in files.items()}}, indent=1))
    return 0
