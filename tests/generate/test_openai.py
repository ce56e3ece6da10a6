"""The openai backend against a real OpenAI-compatible server (llama.cpp serving SmolLM2 on loopback)."""

import socket
import time

import pytest

from tbr.errors import EndpointError
from tbr.generate import SamplingParams, chat, generate_cached
from tbr.generate.openai import OpenAIBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(openai_server):
    return OpenAIBackend(openai_server.base_url, openai_server.model, max_concurrency=2, timeout=120)


def test_chat_and_raw_completion_with_stop(backend):
    # "Answer in one word": the bare question drifts into French place names under some CPU kernels
    # (llama.cpp on AVX512 answered "L'Étoile, la Cité, …"), a 135M model's quirk, not the backend's
    out = backend.generate(
        [chat("What is the capital of France? Answer in one word.")], SamplingParams(max_new_tokens=16)
    )
    assert "Paris" in out[0]
    raw = [[{"role": "user", "content": "1, 2, 3, 4,"}]]
    text = backend.generate(raw, SamplingParams(max_new_tokens=24, stop=["7"]), fmt="raw")[0]
    assert "7" not in text and text.startswith("5")


def test_write_ahead_rows_and_resume(backend, tmp_path):
    path = tmp_path / "gen.jsonl"
    convs = [chat("Name a colour."), chat("Name a fruit.")]
    params = SamplingParams(max_new_tokens=8)
    first = generate_cached(backend, convs, params, path=path, ids=["a", "b"])
    assert [r["id"] for r in first] == ["a", "b"] and all(r["backend"] == "openai" for r in first)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:10])  # a crash mid-write of the second row
    again = generate_cached(backend, convs, params, path=path, ids=["a", "b"])
    assert [r["key"] for r in again] == [r["key"] for r in first]
    assert len(path.read_text().splitlines()) == 2  # the torn row was replaced, nothing duplicated


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast_with_the_url():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    t = time.monotonic()
    with pytest.raises(EndpointError, match=f"cannot reach the OpenAI-compatible endpoint at {url}"):
        OpenAIBackend(url, "m", max_retries=0)
    assert time.monotonic() - t < 30


def test_failed_items_come_back_as_errors_not_text():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    b = OpenAIBackend(url, "m", max_retries=0, timeout=5, preflight=False)
    results = b.generate_results([chat("hi"), chat("there")], SamplingParams(max_new_tokens=4))
    assert all(isinstance(r, EndpointError) for r in results)
    with pytest.raises(EndpointError, match="2/2 requests failed"):
        b.generate([chat("hi"), chat("there")], SamplingParams(max_new_tokens=4))


def test_api_key_is_read_from_the_named_env_var_and_not_kept_in_identity(openai_server, monkeypatch):
    monkeypatch.setenv("TBR_TEST_KEY", "sk-secret-value")
    b = OpenAIBackend(openai_server.base_url, openai_server.model, api_key_env="TBR_TEST_KEY")
    assert b.client.api_key == "sk-secret-value"
    assert "sk-secret" not in b.weights_hash and "sk-secret" not in repr(vars(b).get("base_url"))
