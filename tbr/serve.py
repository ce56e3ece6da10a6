"""A real OpenAI-compatible server on loopback: llama-cpp-python's server over a GGUF file.

Tests use it as the endpoint for judges and the OpenAI backend, and `tbr run` starts one itself when an
experiment asks for a local judge. It is a context manager so the server process cannot outlive the
code that started it, also when that code raises.

    with LlamaServer("smollm2-135m-instruct") as srv:
        backend = OpenAIBackend(srv.base_url, srv.model)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tbr import interrupt
from tbr.errors import EndpointError, ModelError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tbr[server]'"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a tiny race with other starters remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_gguf(model: str) -> tuple[Path, str]:
    """A built-in model name or a path to a .gguf file → (file, the name the server answers to)."""
    from tbr.models import BUILTINS, builtin_gguf

    if model in BUILTINS:
        path = builtin_gguf(model)
        if not path.is_file():
            raise ModelError(f"the GGUF of built-in {model!r} is missing at {path}")
        return path, model
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelError(
            f"{model!r} is neither a built-in model ({', '.join(BUILTINS)}) nor an existing .gguf file"
        )
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"{path} is not a .gguf file; llama.cpp's server only loads GGUF models")
    return path, path.stem


class LlamaServer:
    """`python -m tbr.llama_server` (llama_cpp.server) in a child process; `.base_url` ends in /v1,
    `.model` is its alias."""

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        port: int | None = None,
        alias: str | None = None,
        startup_timeout: float = 120.0,
        seed: int = 0,
    ):
        if importlib.util.find_spec("llama_cpp") is None:
            raise EndpointError(f"the llama.cpp server needs the llama-cpp-python package: {INSTALL_HINT}")
        self.gguf, default_alias = resolve_gguf(model)
        self.model = alias or default_alias
        self.n_ctx, self.n_threads, self.seed = n_ctx, n_threads, seed
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None
        self._hard_kill: Callable[[], None] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        # One request at a time: llama-cpp-python's server serialises requests on one model anyway
        # (it has no parallel slots), so concurrency only queues on the server side. tbr.llama_server is
        # llama_cpp.server with ggml's AMX repacking off where it crashes (its docstring).
        return [
            sys.executable,
            "-m",
            "tbr.llama_server",
            "--model",
            str(self.gguf),
            "--model_alias",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            "--seed",
            str(self.seed),
            "--verbose",
            "False",
        ]

    def start(self) -> LlamaServer:
        # An auto-picked port can be taken between free_port() and the server's bind (tests and `tbr run`
        # start servers side by side); the server then exits with "address already in use" and we retry.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._launch()
            try:
                self._wait_ready()
                return self
            except EndpointError:
                lost_port = "address already in use" in self.log_tail().lower()
                self.stop()
                if not lost_port or attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.base_url = f"http://127.0.0.1:{self.port}/v1"
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        # The server's output goes to a temp file, not a pipe: an unread pipe fills and blocks the server.
        # The file lives as long as the server, so no `with` here; stop() closes and deletes it.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="tbr-llama-server-", suffix=".log", delete=False
        )
        log.info("starting llama.cpp server on %s for %s", self.base_url, self.gguf)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() can end it and its children
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        # A forced exit (tbr.interrupt) skips `with` blocks, and may cut a stop() short: kill the group.
        pid = self.proc.pid
        self._hard_kill = lambda: os.killpg(pid, signal.SIGKILL)
        interrupt.on_hard_exit(self._hard_kill)

    def _wait_ready(self) -> None:
        # Ready = *our* process says it is listening and the port answers. The answer alone is not
        # enough: another server may hold the port while ours is still loading, about to fail its bind.
        listening = f"running on http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise EndpointError(
                    f"the llama.cpp server for {self.gguf} exited with code {self.proc.returncode} "
                    f"before it answered; its output ends with:\n{self.log_tail()}"
                )
            if listening in self.log_tail(200) and self.alive():
                return
            time.sleep(0.25)
        raise EndpointError(
            f"the llama.cpp server at {self.base_url} did not answer within {self.startup_timeout:.0f}s; "
            f"its output ends with:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        """True when /v1/models answers with 200."""
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, n: int = 30) -> str:
        if self._log is None:
            return ""
        try:
            lines = Path(self._log.name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None
        if self._hard_kill is not None:
            interrupt.forget(self._hard_kill)  # the server is gone; nothing left to kill
            self._hard_kill = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:  # a last resort; `with` is the intended use
        if getattr(self, "proc", None) is not None:
            self.stop(timeout=2)
