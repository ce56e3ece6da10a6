"""Ctrl-C and SIGTERM that stop a run even while it is inside a long native call.

Python runs its signal handlers only between bytecodes. A forward pass is one long call into torch
on a huge prompt, and so a `kill` used to wait for it to return (once 10 minutes). Here the C-level
handler also writes the signal number to a pipe (signal.set_wakeup_fd), which a watcher thread reads
at once. The main thread gets `grace_s` seconds to unwind normally (SIGTERM raises SystemExit, Ctrl-C
KeyboardInterrupt; `with` blocks close files and stop servers). If it is still busy then, or on a
second signal, the watcher runs the registered cleanups and exits the process with 128 + signal.
Nothing is lost that a rerun needs: results are written ahead, row by row, and a torn last line is
dropped on resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GRACE_S = 5.0
_cleanups: list[Callable[[], None]] = []
_installed = False


def on_hard_exit(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` before a forced exit (e.g. stop a child server that a `with` block would have stopped)."""
    _cleanups.append(fn)
    return fn


def forget(fn: Callable[[], None]) -> None:
    if fn in _cleanups:
        _cleanups.remove(fn)


def _on_sigterm(signum: int, frame: Any) -> None:
    # `kill` must unwind like Ctrl-C: `with` blocks then stop what they started.
    raise SystemExit(128 + signum)


def _hard_exit(signum: int, why: str) -> None:
    print(f"tbr: {why}; stopping now (results written so far are kept and a rerun resumes)", file=sys.stderr)
    for fn in list(_cleanups):
        with contextlib.suppress(Exception):  # a failing cleanup must not keep the process alive
            fn()
    sys.stderr.flush()
    os._exit(128 + signum)


def _watch(fd: int, grace_s: float) -> None:
    deadline: threading.Timer | None = None
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        for signum in data:
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            if deadline is not None:  # a second Ctrl-C / kill: do not wait any longer
                _hard_exit(signum, "interrupted twice")
            deadline = threading.Timer(
                grace_s, _hard_exit, (signum, f"still busy {grace_s:.0f} s after the signal")
            )
            deadline.daemon = True
            deadline.start()


def install(grace_s: float = GRACE_S, *, watch: bool = True) -> None:
    """Install the SIGTERM handler and (watch) the watcher; main thread only, idempotent."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    if _installed or not watch:
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        return
    threading.Thread(target=_watch, args=(r, grace_s), name="tbr-signal-watch", daemon=True).start()
    _installed = True
