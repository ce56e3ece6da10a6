"""Shared fixtures. `openai_server`: a real OpenAI-compatible server (llama-cpp-python) on loopback,
serving the SmolLM2 built-in GGUF, started once per test session and always stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tbr.serve import LlamaServer
from tests.require import require, require_module

SERVER_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def openai_server() -> Iterator[LlamaServer]:
    require_module("llama_cpp", "pip install 'tbr[server]'")
    from tbr.models import BUILTINS

    if not BUILTINS[SERVER_MODEL].installed():
        require(f"built-in {SERVER_MODEL} is not installed: {BUILTINS[SERVER_MODEL].install_hint()}")
    # One thread: the test machine is 2 shared cores, and llama.cpp's spinning threads slow down badly
    # when oversubscribed (measured: 3 judge requests took 25 s with 1 thread, 110 s with 2, under load).
    with LlamaServer(SERVER_MODEL, n_ctx=2048, n_threads=1) as server:
        yield server
