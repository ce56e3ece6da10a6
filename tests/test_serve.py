"""The llama.cpp server wrapper: it starts, answers, and never outlives its `with` block."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import pytest

from tbr.errors import EndpointError, ModelError
from tbr.serve import LlamaServer, free_port, resolve_gguf
from tests.require import require_module


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone if /proc says so.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


def test_resolve_gguf_rejects_unknown_names_and_non_gguf_files(tmp_path):
    with pytest.raises(ModelError, match="neither a built-in"):
        resolve_gguf("no-such-model")
    txt = tmp_path / "weights.bin"
    txt.write_text("x")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_gguf(str(txt))


def test_builtin_resolves_to_its_gguf_and_alias():
    path, alias = resolve_gguf("smollm2-135m-instruct")
    assert path.suffix == ".gguf" and path.is_file()
    assert alias == "smollm2-135m-instruct"


def test_missing_llama_cpp_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what `import llama_cpp` sees when it is absent
    with pytest.raises(EndpointError, match=r"pip install 'tbr\[server\]'"):
        LlamaServer("smollm2-135m-instruct")


@pytest.mark.slow
def test_fixture_server_answers_models(openai_server):
    with urllib.request.urlopen(openai_server.base_url + "/models", timeout=10) as r:
        ids = [m["id"] for m in json.load(r)["data"]]
    assert openai_server.base_url.startswith("http://127.0.0.1:") and openai_server.base_url.endswith("/v1")
    assert ids == [openai_server.model]


@pytest.mark.slow
def test_server_is_stopped_on_exception(tmp_path):
    require_module("llama_cpp", "pip install 'tbr[server]'")
    srv = LlamaServer("smollm2-135m-instruct", n_ctx=512, n_threads=1)
    with pytest.raises(RuntimeError, match="boom"), srv:
        pid = srv.proc.pid
        assert srv.alive()
        raise RuntimeError("boom")
    assert srv.proc is None and _gone(pid)
    assert not srv.alive()  # nothing answers on its port any more


@pytest.mark.slow
def test_broken_gguf_fails_fast_with_server_output(tmp_path):
    require_module("llama_cpp", "pip install 'tbr[server]'")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    srv = LlamaServer(str(bad), startup_timeout=60)
    with pytest.raises(EndpointError, match="exited with code") as e:
        srv.start()
    assert "broken.gguf" in str(e.value)
    assert srv.proc is None


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_taken_port_is_not_mistaken_for_ours(openai_server):
    # Another server answers on the port; ours must fail its bind and say so, not adopt the other one.
    srv = LlamaServer("smollm2-135m-instruct", n_ctx=512, n_threads=1, port=openai_server.port)
    with pytest.raises(EndpointError, match="address already in use"):
        srv.start()
    assert srv.proc is None and openai_server.alive()


@pytest.mark.slow
def test_auto_port_retries_when_the_port_is_taken(openai_server, monkeypatch):
    import tbr.serve

    ports = iter([openai_server.port, free_port()])  # the first pick loses the race
    monkeypatch.setattr(tbr.serve, "free_port", lambda: next(ports))
    with LlamaServer("smollm2-135m-instruct", n_ctx=512, n_threads=1) as srv:
        assert srv.port != openai_server.port and srv.alive()


@pytest.mark.slow
def test_sigterm_to_tbr_stops_the_server_it_started(tmp_path):
    """`kill` on a tbr process unwinds like Ctrl-C, so the llama.cpp server it started goes too."""
    require_module("llama_cpp", "pip install 'tbr[server]'")
    import signal
    import subprocess
    import sys
    import time

    # Mid-generation: 60 queued requests must be dropped, not waited for.
    script = (
        "from tbr.cli import install_sigterm_handler; from tbr.serve import LlamaServer\n"
        "from tbr.generate.openai import OpenAIBackend; from tbr.generate.base import SamplingParams\n"
        "install_sigterm_handler()\n"
        "with LlamaServer('smollm2-135m-instruct', n_ctx=512, n_threads=1) as srv:\n"
        "    print(srv.proc.pid, flush=True)\n"
        "    b = OpenAIBackend(srv.base_url, srv.model, max_concurrency=1)\n"
        "    convs = [[{'role': 'user', 'content': f'Count to {i}.'}] for i in range(60)]\n"
        "    b.generate_results(convs[:1], SamplingParams(max_new_tokens=8))\n"
        "    print('serving', flush=True)\n"
        "    b.generate_results(convs, SamplingParams(max_new_tokens=64))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(proc.stdout.readline())
        # The server has answered one request, so the 60 that follow are being served when the signal lands.
        assert proc.stdout.readline().strip() == "serving"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        deadline = time.time() + 15
        while not _gone(server_pid) and time.time() < deadline:
            time.sleep(0.2)
        assert _gone(server_pid)
    finally:
        proc.kill()


@pytest.mark.slow
def test_server_answers_a_completion_where_the_cpu_has_amx(openai_server):
    """Not only /models: on a Xeon with AMX, plain llama_cpp.server died on its first completion
    (ggml's AMX repacking); tbr.llama_server switches that off there."""
    from tbr.generate import SamplingParams
    from tbr.generate.openai import OpenAIBackend

    be = OpenAIBackend(openai_server.base_url, openai_server.model)
    out = be.generate([[{"role": "user", "content": "Say hello."}]], SamplingParams(max_new_tokens=8))
    assert out[0].strip()
    assert openai_server.proc.poll() is None  # still running


def test_disable_amx_repack_only_on_amx_cpus(monkeypatch):
    ll = require_module("llama_cpp", "pip install 'tbr[server]'").llama_cpp
    from tbr import llama_server

    # start from llama.cpp's own default (another test's backend may have patched it already); undone after
    orig = getattr(ll.llama_model_default_params, "tbr_default", ll.llama_model_default_params)
    monkeypatch.setattr(ll, "llama_model_default_params", orig)
    monkeypatch.setattr(llama_server, "cpu_has_amx", lambda: False)
    assert not llama_server.disable_amx_repack()
    assert ll.llama_model_default_params().use_extra_bufts  # llama.cpp's own default stays
    monkeypatch.setattr(llama_server, "cpu_has_amx", lambda: True)
    assert llama_server.disable_amx_repack() and llama_server.disable_amx_repack()  # idempotent
    assert not ll.llama_model_default_params().use_extra_bufts
    assert not hasattr(ll.llama_model_default_params.tbr_default, "tbr_default")  # wrapped once


@pytest.mark.slow
def test_a_server_that_dies_during_a_stage_is_named_in_the_error(monkeypatch):
    require_module("llama_cpp", "pip install 'tbr[server]'")
    from tbr.run import _external_server

    started: list[LlamaServer] = []
    start = LlamaServer.start
    monkeypatch.setattr(LlamaServer, "start", lambda self: started.append(self) or start(self))
    dies = pytest.raises(EndpointError, match=r"exited with code -9 during the stage")
    with dies, _external_server({"serve": "smollm2-135m-instruct"}, "d1e5") as values:
        assert values["api_base"] == started[0].base_url
        started[0].proc.kill()
        started[0].proc.wait()
        raise EndpointError("3/3 requests failed after retries; first: Connection error.")
    assert started[0].proc is None  # stopped (and its log closed) all the same
