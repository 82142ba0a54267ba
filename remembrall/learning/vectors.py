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
