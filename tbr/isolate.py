"""Run one pipeline stage in a fresh process, so that a long `tbr run` does not grow.

A `tbr run` worker used to run every stage in its own process, one after another: load a model, train
or generate, drop it, load the next. Freed tensors go back to glibc's heap, not to the OS, and the
heap fragments, so a worker grew from stage to stage until the kernel's OOM killer took one at
11.3 GB RSS, halfway through a seeds run (docs/results.md). A child process per stage gives every
stage a clean heap and its memory back at exit; the cost is one import of torch and transformers per
stage (a few seconds against minutes of work).

`spawn`, not `fork`: the parent may have run torch ops (and started OpenMP threads) already, and a
forked child of such a process can deadlock in its first parallel region.

What crosses the pipe is plain data: the function's result, the child's CPU seconds and peak RSS, or,
on failure, the exception's class and message. A tbr error (ConfigError, DataError, ...) is raised
again in the parent as the same class, so the CLI prints it as before; any other exception comes back
as a RuntimeError carrying the child's traceback. A child that dies without a word (OOM killer,
segfault) is reported with its signal, and a rerun resumes the stage.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import resource
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from tbr.errors import TbrError

log = logging.getLogger(__name__)

# How long a child gets to unwind after SIGTERM (its own tbr.interrupt grace is 5 s) before SIGKILL.
STOP_GRACE_S = 15.0


class StageDied(TbrError):
    """A stage's process ended without reporting back (killed by a signal, or crashed in native code)."""


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], log_level: int) -> None:
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from tbr import interrupt

    interrupt.install()  # SIGTERM from the parent unwinds the stage's `with` blocks (servers, files)
    c0 = time.process_time()
    try:
        result = fn(*args)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        conn.send(("error", type(e).__module__, type(e).__qualname__, str(e), traceback.format_exc()))
        raise SystemExit(1) from None
    # ru_maxrss is in KiB on Linux
    conn.send(
        ("ok", result, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    )


def _reraise(what: str, module: str, name: str, message: str, tb: str) -> None:
    if name == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if name == "SystemExit":
        raise SystemExit(130)
    cls: Any = None
    if module.startswith("tbr."):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = None
    if isinstance(cls, type) and issubclass(cls, TbrError):
        raise cls(message)
    raise RuntimeError(f"{what} failed in its own process: {name}: {message}\n{tb}")


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        hint = (
            " (the kernel's OOM killer sends this when memory runs out: check `dmesg`)" if -code == 9 else ""
        )
        return f"was killed by {sig}{hint}"
    return f"exited with code {code} without reporting back"


def run_isolated(what: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Call `fn(*args)` in a fresh spawned process; return (its result, CPU seconds, peak RSS in MB).

    `fn` and `args` must pickle (a module-level function and plain data). `what` names the work in
    errors ("stage train/wo-g0.0-…").
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child, args=(send, fn, args, logging.getLogger().getEffectiveLevel()), name="tbr-stage"
    )
    proc.start()
    send.close()  # the child holds the only writer: EOF on `recv` means it is gone
    msg: tuple[Any, ...] | None = None
    try:
        try:
            msg = recv.recv()
        except EOFError:
            msg = None
        proc.join()
    finally:
        # Ctrl-C or SIGTERM in the parent (or any error here): stop the child the way `kill` would,
        # so it closes its files and servers, then make sure it is gone.
        if proc.is_alive():
            proc.terminate()
            proc.join(STOP_GRACE_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        recv.close()
    if msg is None:
        raise StageDied(
            f"{what} {_describe_exit(proc.exitcode)}; what it wrote is kept and a rerun resumes it"
        )
    if msg[0] == "error":
        _reraise(what, *msg[1:])
    _, result, cpu_s, rss_mb = msg
    return result, cpu_s, rss_mb
