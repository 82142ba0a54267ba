"""Stage classes, one module each; looked up by the ``type`` name a stage spec carries."""

from __future__ import annotations

import importlib

#: type name -> "module:Class". Lazy, so a decode process never imports torch.
STAGE_TYPES = {
    "decode": "remembrall.stages.decode:DecodeStage",
    "infer": "remembrall.stages.infer:InferStage",
    "sink": "remembrall.stages.sink:SinkStage",
    "select": "remembrall.stages.select:SelectStage",
    "label": "remembrall.stages.label:LabelStage",
    "buffer": "remembrall.stages.buffer:BufferStage",
    "retrain": "remembrall.stages.retrain:RetrainStage",
    "text_decode": "remembrall.stages.text_decode:TextDecodeStage",
}


def stage_class(type_name: str) -> type:
    try:
        target = STAGE_TYPES[type_name]
    except KeyError:
        raise ValueError(f"unknown stage type {type_name!r} (known: {', '.join(sorted(STAGE_TYPES))})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
