"""tbr.isolate: a stage in its own process gives back its result, its errors and its memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tbr.errors import ConfigError
from tbr.isolate import StageDied, run_isolated


def _work(n: int) -> dict[str, int]:
    # Real CPU work and a real 300 MB allocation, both in the child.
    block = bytearray(300 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    return {"sum": sum(range(n)), "pid": os.getpid()}


def _config_error(msg: str) -> None:
    raise ConfigError(msg)


def _bug() -> None:
    {}["missing"]  # noqa: B018 - a plain bug, not a tbr error


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_result_cpu_and_memory_come_back_and_the_memory_stays_in_the_child():
    before = _rss_mb()
    result, cpu_s, rss_mb = run_isolated("stage demo", _work, 2_000_000)
    assert result["sum"] == sum(range(2_000_000))
    assert result["pid"] != os.getpid()  # it really ran elsewhere
    assert cpu_s > 0
    assert rss_mb > 300  # the child's peak holds the 300 MB block ...
    assert _rss_mb() - before < 100  # ... and the parent never did


def test_a_tbr_error_comes_back_as_itself():
    with pytest.raises(ConfigError, match="^bad value for train.lr$"):
        run_isolated("stage train/x", _config_error, "bad value for train.lr")


def test_any_other_error_comes_back_with_the_childs_traceback():
    with pytest.raises(RuntimeError, match=r"stage eval/x failed in its own process: KeyError") as e:
        run_isolated("stage eval/x", _bug)
    assert "_bug" in str(e.value)  # the traceback names where it happened


def test_a_child_killed_by_a_signal_is_named_as_such():
    with pytest.raises(StageDied, match=r"stage train/y was killed by SIGKILL .*OOM killer.*rerun resumes"):
        run_isolated("stage train/y", _die)


@pytest.mark.slow
def test_a_killed_parent_takes_its_stage_down_with_it(tmp_path):
    """SIGTERM to `tbr run` must not leave an orphaned stage training on."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from tbr import interrupt
        from tbr.isolate import run_isolated

        def sleeper(path):
            Path(path).write_text(str(os.getpid()))
            time.sleep(600)

        if __name__ == "__main__":
            interrupt.install()
            run_isolated("stage sleep", sleeper, {str(pidfile)!r})
        """
    )
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=tmp_path)
    deadline = time.time() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() < deadline and parent.poll() is None, "the stage never started"
        time.sleep(0.2)
    child = int(pidfile.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) != 0
    with pytest.raises(ProcessLookupError):  # the child is gone too (reaped by the parent)
        for _ in range(100):
            os.kill(child, 0)
            time.sleep(0.1)
