"""The YAML configs that ship inside the package (``remembrall/configs/*.yaml``).

A wheel install has no repository checkout, so ``remembrall run configs/demo.yaml`` cannot find a
file there; these configs travel with the package instead and are found by name
(``remembrall run demo``), and ``remembrall init DIR`` writes editable copies of them. Stdlib only
(plus the stdlib-only :mod:`remembrall.atomic`), so the command line resolves a name before it loads
anything heavy.

>>> "demo" in packaged() and "default" in packaged()
True
>>> resolve("demo.yaml") == packaged()["demo"]
True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from remembrall.atomic import atomic_write_bytes

SUFFIX = ".yaml"


def packaged() -> dict[str, Path]:
    """Name (the file stem, e.g. ``"jetson-orin-nano"``) -> path of every packaged config, sorted by name."""
    folder = files(__package__ or "remembrall") / "configs"
    if not isinstance(folder, Path):  # a zip import: there is no file a YAML loader could open
        raise RuntimeError(f"remembrall's packaged configs are not files on disk ({folder}); install the wheel")
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob(f"*{SUFFIX}")) if p.is_file()}


def _names_hint(configs: dict[str, Path]) -> str:
    return ", ".join(configs) if configs else "none (the package was installed without them)"


def resolve(name_or_path: str) -> Path:
    """The config file a command-line argument means.

    An existing file wins (``my.yaml``, ``configs/demo.yaml`` in a checkout), so a local file always
    shadows a packaged config of the same name; otherwise a packaged name with or without ``.yaml``.
    Raises :class:`FileNotFoundError` whose message lists the packaged names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    configs = packaged()
    name = name_or_path[: -len(SUFFIX)] if name_or_path.endswith(SUFFIX) else name_or_path
    if name in configs:  # a name with a "/" is never a key: it was meant as a path
        return configs[name]
    hint = f"; for the packaged one give its name, {path.stem}" if path.stem in configs else ""
    raise FileNotFoundError(
        f"{name_or_path}: config file not found, and not a packaged config name "
        f"(packaged: {_names_hint(configs)}){hint}; `remembrall init DIR` writes editable copies of them")


def write_copies(directory: Path, names: list[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write editable copies of the packaged configs (all, or ``names``) into ``directory``; return their paths.

    Every name and target is checked before anything is written, so a refusal (an unknown name:
    :class:`FileNotFoundError`; an existing file without ``overwrite``: :class:`FileExistsError`)
    leaves the folder as it was. Each file is written atomically.
    """
    configs = packaged()
    wanted = list(configs) if names is None else list(dict.fromkeys(names))
    sources: dict[str, Path] = {}
    for name in wanted:
        key = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
        if key not in configs:
            raise FileNotFoundError(f"{name}: not a packaged config name (packaged: {_names_hint(configs)})")
        sources[key] = configs[key]
    directory = Path(directory)
    targets = {key: directory / f"{key}{SUFFIX}" for key in sources}
    if not overwrite:
        existing = [str(t) for t in targets.values() if t.exists()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise FileExistsError(f"{', '.join(existing)} already {verb}; nothing was written "
                                  "(overwrite=True, or `remembrall init --force`, replaces it)")
    directory.mkdir(parents=True, exist_ok=True)
    for key, target in targets.items():
        atomic_write_bytes(target, sources[key].read_bytes())
    return list(targets.values())
