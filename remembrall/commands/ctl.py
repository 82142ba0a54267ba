"""``remembrall ctl --out DIR VERB``: talk to a running pipeline's memory and zoo.

Verbs: ``stats`` (memory, buffer and zoo of the run, read from their files), ``sleep``
(consolidate the episodic memory now), ``forget --stream S`` (a stream's memories, buffer samples
and the specialists trained only on it), ``recall VERSION`` (serve a zoo specialist), and
``rollback``. Commands travel over the existing control path (the retrain stage's ``control``
socket; retrain relays ``forget`` to infer and buffer). What can be checked before sending — an
unknown stream, a version no zoo holds, no running pipeline — is an error with exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from remembrall.config import Config
from remembrall.learning.archive import unpack
from remembrall.learning.episodic import FORMAT as MEMORY_FORMAT
from remembrall.learning.episodic import FORMAT_VERSION as MEMORY_VERSION
from remembrall.learning.episodic import MemoryFileError
from remembrall.learning.replay import ReplayError, ReplayMemory
from remembrall.learning.zoo import FORMAT as ZOO_FORMAT
from remembrall.learning.zoo import FORMAT_VERSION as ZOO_VERSION
from remembrall.learning.zoo import ZooError
from remembrall.pipeline.rundir import modality_path

MODALITIES = ("vision", "text")


class CtlError(RuntimeError):
    """A command that cannot be carried out; the message says why (exit status 2)."""


def _status(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CtlError(f"no running pipeline found in {out} (no readable status.json)") from None


def send_control(out: Path, kind: str, fields: dict[str, Any]) -> None:
    """Push one command to the retrain stage of the pipeline writing into ``out``."""
    from remembrall.pipeline.control import PipelineUnreachable, push_message
    from remembrall.pipeline.messages import Message

    status = _status(out)
    if "retrain" not in status.get("stages", {}):
        raise CtlError(f"the pipeline in {out} has no running retrain stage (learn: false?)")
    try:
        push_message(status.get("sock_dir", ""), "retrain.control", Message(kind, fields=fields))
    except PipelineUnreachable as exc:
        raise CtlError(f"the retrain stage of the pipeline in {out} cannot take the command: {exc}") from None


def _memory_summary(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        meta, arrays = unpack(path.read_bytes(), MEMORY_FORMAT, MEMORY_VERSION, MemoryFileError, str(path))
    except (OSError, MemoryFileError) as exc:
        return {"error": str(exc)}
    streams: dict[str, int] = {}
    for s in meta.get("streams", []):
        streams[s] = streams.get(s, 0) + 1
    return {"items": int(arrays["keys"].shape[0]), "classes": len(meta.get("classes", [])), "streams": streams,
            "blend_weight": meta.get("calibration", {}).get("alpha"), "stats": meta.get("stats", {})}


def _zoo_summary(index: Path) -> dict[str, Any] | None:
    if not index.exists():
        return None
    try:
        meta, _ = unpack(index.read_bytes(), ZOO_FORMAT, ZOO_VERSION, ZooError, str(index))
    except (OSError, ZooError) as exc:
        return {"error": str(exc)}
    entries = meta.get("entries", [])
    return {"specialists": len(entries),
            "entries": [{k: e.get(k) for k in ("version", "val_accuracy", "recalls", "streams", "created")}
                        for e in entries]}


def _buffer_summary(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        mem = ReplayMemory.load(path)
    except ReplayError as exc:
        return {"error": str(exc)}
    return {"train": len(mem), "holdout": mem.holdout_size, "streams": mem.streams()}


def stats(cfg: Config, out: Path) -> dict[str, Any]:
    """Memory, buffer and zoo of the run in ``out``, per modality (files only: works after a run too)."""
    zoo_root = Path(cfg.zoo.path) if Path(cfg.zoo.path).is_absolute() else out / cfg.zoo.path
    report: dict[str, Any] = {}
    for modality in MODALITIES:
        entry = {"memory": _memory_summary(modality_path(cfg.memory.path, out, modality)),
                 "buffer": _buffer_summary(modality_path(cfg.buffer.path, out, modality)),
                 "zoo": _zoo_summary(zoo_root / modality / "index.npz")}
        if any(v is not None for v in entry.values()):
            report[modality] = entry
    return report


def known_streams(cfg: Config, out: Path) -> set[str]:
    """Streams the run has labels, memories or specialists of, or reads from."""
    found = {src.id for src in cfg.sources if src.id}
    try:
        for stage in _status(out).get("stages", {}).values():
            found.update(stage.get("streams") or [])
    except CtlError:
        pass
    for entry in stats(cfg, out).values():
        for part in ("memory", "buffer"):
            found.update((entry.get(part) or {}).get("streams", {}))
        for spec in (entry.get("zoo") or {}).get("entries", []):
            found.update(spec.get("streams") or [])
    return found


def zoo_versions(cfg: Config, out: Path, modality: str) -> list[int]:
    report = stats(cfg, out).get(modality, {})
    return [e["version"] for e in (report.get("zoo") or {}).get("entries", [])]


def ctl_main(cfg: Config, args: Any) -> int:
    """Carry out ``args.verb``; raises :class:`CtlError` for what cannot be done."""
    out = Path(args.out)
    if args.verb == "stats":
        print(json.dumps(stats(cfg, out), indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
        return 0
    if args.verb == "sleep":
        send_control(out, "sleep", {"modality": args.modality} if args.modality else {})
        print("consolidation requested")
    elif args.verb == "forget":
        known = known_streams(cfg, out)
        if args.stream not in known:
            raise CtlError(f"unknown stream {args.stream!r}: this run has none of its labels, memories or "
                           f"specialists (known: {', '.join(sorted(known)) or 'none'})")
        send_control(out, "forget", {"forget_stream": args.stream})
        print(f"forgetting stream {args.stream}: its memories, buffer samples and the specialists trained only on it")
    elif args.verb == "recall":
        modality = args.modality or "vision"
        versions = zoo_versions(cfg, out, modality)
        if args.version not in versions:
            raise CtlError(f"no specialist v{args.version} in the {modality} zoo of {out} "
                           f"(held: {', '.join(f'v{v}' for v in versions) or 'none'})")
        send_control(out, "recall", {"version": args.version, "modality": modality})
        print(f"recall of {modality} specialist v{args.version} requested")
    elif args.verb == "rollback":
        fields: dict[str, Any] = {"modality": args.modality or "vision"}
        if args.to_version is not None:
            fields["to_version"] = args.to_version
        send_control(out, "rollback", fields)
        print(f"rollback requested ({fields['modality']}"
              f"{'' if args.to_version is None else f' to v{args.to_version}'})")
    return 0
