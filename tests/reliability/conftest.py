"""Fixtures of the reliability suite: the real built-in SmolLM2, loaded once per dtype."""

from __future__ import annotations

from typing import Any

import pytest

MODEL = "smollm2-135m-instruct"

_loaded: dict[str, Any] = {}


def load_backend(dtype: str, batch_size: int = 4) -> Any:
    """A TransformersBackend on the built-in model; the weights are loaded once per dtype."""
    from tbr.generate.hf import TransformersBackend
    from tbr.models import load

    if dtype not in _loaded:
        _loaded[dtype] = load(MODEL, dtype=dtype, device="cpu")
    return TransformersBackend(MODEL, batch_size=batch_size, progress=False, loaded=_loaded[dtype])


@pytest.fixture
def fp32() -> Any:
    return load_backend("fp32")


@pytest.fixture
def bf16() -> Any:
    return load_backend("bf16")
