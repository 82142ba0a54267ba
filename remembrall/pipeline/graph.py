"""Build the stage graph (which processes, which sockets between them) from a validated config.

Data edges are PUSH/PULL: the receiving stage binds a stable ``ipc://`` address in the run
directory and its producers connect, so a restarted stage finds its peers again and fan-in
(several sources into one infer) needs no broker. Control edges (model announcements, infer
load reports) are PUB/SUB on their own sockets, so control never queues behind data.
"""

from __future__ import annotations

from pathlib import Path

from remembrall.config import Config, ConfigError, config_to_dict
from remembrall.io.brokers import BrokerUrlError, check_url, check_urls, is_broker_url
from remembrall.io.sources import detect_modality
from remembrall.pipeline.runtime import StageSpec

#: Longest ipc:// path the kernel accepts (sun_path is 108 bytes with the terminating NUL).
MAX_IPC_PATH = 107

def _ipc(run_dir: Path, name: str) -> str:
    path = run_dir / "sockets" / name
    if len(str(path)) > MAX_IPC_PATH:
        raise ConfigError(
            f"run_dir {run_dir} is too long for ipc socket paths ({len(str(path))} > {MAX_IPC_PATH} bytes); "
            "choose a shorter run_dir"
        )
    return f"ipc://{path}"


def restarts_address(run_dir: Path) -> str:
    """Where the supervisor publishes every stage's restart count (``stages`` messages)."""
    return _ipc(run_dir, "stages")


def build_graph(cfg: Config, run_dir: Path, out_dir: Path) -> list[StageSpec]:
    """Return the stage specs of the whole pipeline, sources last (they start last)."""
    try:  # a stage that cannot parse its broker URLs would only crash and restart
        check_urls(cfg.sink.brokers, "sink.brokers")
        if cfg.zoo.share and is_broker_url(cfg.zoo.share):
            check_url(cfg.zoo.share, "zoo.share")
    except BrokerUrlError as exc:
        raise ConfigError(str(exc)) from None
    plain = config_to_dict(cfg)
    modalities = {src.id: detect_modality(src) for src in cfg.sources}
    streams = [src.id for src in cfg.sources]
    infer_in = _ipc(run_dir, "infer.in")
    sink_in = _ipc(run_dir, "sink.in")

    def spec(name: str, type_: str, **kw: object) -> StageSpec:
        return StageSpec(name=name, type=type_, config=plain, run_dir=str(run_dir), out_dir=str(out_dir),
                         **kw)  # type: ignore[arg-type]

    infer_outputs = {"predictions": f"push+connect:{sink_in}"}
    infer_inputs = {"in": f"pull+bind:{infer_in}"}
    specs: list[StageSpec] = [spec("sink", "sink", inputs={"in": f"pull+bind:{sink_in}"}, streams=streams)]
    if cfg.sink.pub:
        specs[0].outputs["pub"] = cfg.sink.pub
    if cfg.learn:
        select_in, label_in = _ipc(run_dir, "select.in"), _ipc(run_dir, "label.in")
        buffer_in, retrain_in = _ipc(run_dir, "buffer.in"), _ipc(run_dir, "retrain.in")
        model_ready, infer_load = _ipc(run_dir, "model_ready"), _ipc(run_dir, "infer.load")
        infer_outputs["samples"] = f"push+connect:{select_in}"
        infer_outputs["load"] = f"pub+bind:{infer_load}"
        infer_inputs["model_ready"] = f"sub+connect:{model_ready}"
        buffer_outputs = {"labelled": f"push+connect:{retrain_in}"}
        buffer_inputs = {"labelled": f"pull+bind:{buffer_in}"}
        if cfg.memory.enabled or cfg.zoo.enabled:
            # accepted labels reach infer's episodic memory (and zoo router) at once; PUB/SUB like
            # every control edge, so the learning loop never waits on infer (nor forms a data cycle)
            infer_inputs["memory"] = f"sub+connect:{_ipc(run_dir, 'memory')}"
            buffer_outputs["memory"] = f"pub+bind:{_ipc(run_dir, 'memory')}"
        buffer_inputs["control"] = f"sub+connect:{model_ready}"  # forget commands retrain relays
        specs += [
            spec("retrain", "retrain", streams=streams,
                 inputs={"labelled": f"pull+bind:{retrain_in}", "infer_load": f"sub+connect:{infer_load}",
                         "control": f"pull+bind:{_ipc(run_dir, 'retrain.control')}"},
                 outputs={"model_ready": f"pub+bind:{model_ready}"}),
            spec("buffer", "buffer", streams=streams, inputs=buffer_inputs, outputs=buffer_outputs),
            spec("label", "label", streams=streams, inputs={"selected": f"pull+bind:{label_in}"},
                 outputs={"labelled": f"push+connect:{buffer_in}"}),
            spec("select", "select", streams=streams, inputs={"samples": f"pull+bind:{select_in}"},
                 outputs={"selected": f"push+connect:{label_in}"}),
        ]
    if cfg.learn and cfg.label.labeler == "external":
        # human labels come back over this socket (or as files in label.external_dir/labels/)
        next(s for s in specs if s.name == "label").inputs["labels"] = f"pull+bind:{_ipc(run_dir, 'label.labels')}"
    at_least_once = cfg.transport.at_least_once
    if at_least_once:  # the sink acknowledges what it wrote; finite sources re-send what it did not
        specs[0].outputs["acks"] = f"pub+bind:{_ipc(run_dir, 'sink.acks')}"
    if at_least_once and cfg.learn:  # the buffer acknowledges saved labels to the label stage
        label = next(s for s in specs if s.name == "label")
        label.inputs.update(acks=f"sub+connect:{_ipc(run_dir, 'buffer.acks')}",
                            restarts=f"sub+connect:{restarts_address(run_dir)}")
        label.params["resend_on"] = ["buffer"]
        next(s for s in specs if s.name == "buffer").outputs["acks"] = f"pub+bind:{_ipc(run_dir, 'buffer.acks')}"
    if cfg.ui.enabled:  # the live view's side channel: infer sends only while a browser watches
        infer_outputs["preview"] = f"xpub+bind:{_ipc(run_dir, 'preview')}"
    specs.append(spec("infer", "infer", inputs=infer_inputs, outputs=infer_outputs, streams=streams,
                      params={"modalities": sorted(set(modalities.values()))}))
    for src in cfg.sources:
        type_ = "text_decode" if modalities[src.id] == "text" else "decode"
        source = spec(f"{'text' if type_ == 'text_decode' else 'decode'}-{src.id}", type_,
                      outputs={"out": f"push+connect:{infer_in}"}, streams=[src.id])
        if at_least_once:  # used only when the source turns out finite (files, manifests)
            source.inputs.update(acks=f"sub+connect:{_ipc(run_dir, 'sink.acks')}",
                                 restarts=f"sub+connect:{restarts_address(run_dir)}")
            source.params["resend_on"] = ["infer", "sink"]
        specs.append(source)
    return specs


def source_stage_names(specs: list[StageSpec]) -> dict[str, str]:
    """stage name -> stream, for the stages that produce a stream."""
    return {s.name: s.streams[0] for s in specs if s.type in ("decode", "text_decode")}


def data_consumers(specs: list[StageSpec]) -> dict[str, list[str]]:
    """stage name -> the stages it PUSHes data to (matched by address; control PUB/SUB excluded)."""
    bound = {}
    for s in specs:
        for ep in s.inputs.values():
            pattern, _, address = ep.partition(":")
            if pattern.startswith("pull"):
                bound[address] = s.name
    return {
        s.name: sorted({bound[addr] for ep in s.outputs.values()
                        for pattern, _, addr in [ep.partition(":")]
                        if pattern.startswith("push") and addr in bound})
        for s in specs
    }
