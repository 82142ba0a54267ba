"""Embedding arithmetic the learning modules share."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (one vector or N×d rows) as contiguous float32 rows of length 1 (an all-zero row stays 0).

    >>> unit_rows(np.array([3.0, 4.0])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[None, :]
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (last axis) as int8 codes and one float32 scale each, ``x ≈ codes × scale``: a quarter
    of float32's bytes, and a cosine between unit rows moves by well under 0.01.

    >>> codes, scale = quantize_rows(np.array([[0.6, -0.8], [0.0, 0.0]]))
    >>> codes.tolist(), [round(float(v), 2) for v in (codes * scale[:, None])[0]]
    ([[95, -127], [0, 0]], [0.6, -0.8])
    """
    x = np.asarray(x, np.float32)
    scale = (np.abs(x).max(axis=-1) / 127).astype(np.float32)
    codes = np.round(x / np.maximum(scale, np.float32(1e-30))[..., None])
    return np.clip(codes, -127, 127).astype(np.int8), scale
