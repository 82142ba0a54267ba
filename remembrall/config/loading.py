"""Loading a configuration: YAML walked against the type hints, command-line overrides, checks.

An unknown key, a wrong type or an out-of-range value is a :class:`ConfigError` that names the
file and the dotted key (``configs/x.yaml: infer.batch_size: expected an integer >= 1, got 'big'``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from remembrall.config.base import ConfigError
from remembrall.config.schema import Config


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, key: str, meta: dict[str, Any] | None = None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, meta)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int and ok and float(value) != int(value):
            ok = False
        if not ok:
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        value = tp(value)
        meta = meta or {}
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"{key}: must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi}, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - programming error


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    where = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"{dotted}: unknown key (known keys here: {', '.join(sorted(known))})")
        kwargs[key] = _convert(hints[key], value, dotted, dict(known[key].metadata))
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config; ``overrides`` are dotted keys from the command line."""
    data: Any = {}
    label = str(path) if path else "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{label}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{label}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, label)
    try:
        cfg = from_dict(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    _check_semantics(cfg, label)
    return cfg


def parse_overrides(values: list[str]) -> dict[str, Any]:
    """``["infer.batch_size=8", ...]`` (``--set``) → dotted keys with YAML-typed values.

    >>> parse_overrides(["infer.batch_size=8", "label.classes=[a, b]"])
    {'infer.batch_size': 8, 'label.classes': ['a', 'b']}
    """
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set infer.batch_size=8")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it, "
                              "e.g. --set \"sink.brokers=['mqtt://host/topic?qos=1']\"") from None
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, label: str) -> None:
    """Set ``a.b.0.c`` (a list index where the node is a list) for a command-line override."""
    node: Any = data
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{label}: {dotted}: {part!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part == "sources" and "sources" not in node:
                    node["sources"] = [{}]
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{label}: {dotted}: cannot override inside {'.'.join(parts[:i])}, not a mapping")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 brackets allowed) is this machine's loopback."""
    host = host.strip("[]")
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_semantics(cfg: Config, label: str) -> None:
    if not cfg.sources:
        raise ConfigError(f"{label}: sources: at least one source is needed")
    seen = set()
    for i, src in enumerate(cfg.sources):
        if not src.id:
            src.id = f"stream{i}"
        if src.id in seen:
            raise ConfigError(f"{label}: sources[{i}].id: duplicate stream id {src.id!r}")
        seen.add(src.id)
        if src.reconnect_max_s < src.reconnect_initial_s:
            raise ConfigError(f"{label}: sources[{i}].reconnect_max_s must be >= reconnect_initial_s")
    if (cfg.decode.width is None) != (cfg.decode.height is None):
        raise ConfigError(f"{label}: decode.width and decode.height must be set together")
    if cfg.infer.backend == "onnxruntime" and cfg.infer.device not in ("auto", "cpu"):
        raise ConfigError(f"{label}: infer.backend onnxruntime runs on the CPU; set infer.device: cpu (or auto), "
                          f"or infer.backend: torch for {cfg.infer.device}")
    _check_remote(cfg.label.remote, cfg, "label.remote", label, needed=cfg.learn and cfg.label.labeler == "remote")
    _check_remote(cfg.retrain.remote, cfg, "retrain.remote", label, needed=False)
    if cfg.ui.enabled and not cfg.ui.allow_remote and not is_loopback_host(cfg.ui.host):
        raise ConfigError(f"{label}: ui.host {cfg.ui.host!r} is not a loopback address: the UI takes labels and "
                          "control commands, so serving it to the network needs ui.allow_remote: true")


def _check_remote(address: str, cfg: Config, where: str, label: str, needed: bool) -> None:
    """A ``remembrall serve`` address: tcp:// needs CURVE keys (nothing crosses a network in clear)."""
    if not address:
        if needed:
            raise ConfigError(f"{label}: {where}: give the server's address, tcp://HOST:PORT")
        return
    if not address.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"{label}: {where}: {address!r} must be tcp://HOST:PORT or ipc://PATH")
    if address.startswith("tcp://") and not (cfg.remote.server_key and cfg.remote.client_key):
        raise ConfigError(f"{label}: {where} is tcp://: set remote.server_key (the server's NAME.key) and "
                          "remote.client_key (this pipeline's NAME.key_secret); remembrall keys generate writes them")


def config_to_dict(cfg: Any) -> Any:
    """Plain-data form of a config (for stage specs passed to child processes)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_from_plain(data: dict[str, Any]) -> Config:
    """Rebuild a validated :class:`Config` from :func:`config_to_dict` output."""
    return from_dict(Config, data)
