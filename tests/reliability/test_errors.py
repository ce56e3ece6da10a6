"""Defect 6: bad input files and output paths are `tbr: error` lines naming the file, line or key,
raised before a model loads; they used to be tracebacks, several only after the model had loaded.

Every case runs the real CLI with a model name that does not exist: if the error named here appears,
it was raised before the model was looked up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tbr.cli import main

NO_MODEL = ["--model", "no-such/model-xyz"]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = main(argv + NO_MODEL)
    return rc, capsys.readouterr().err


def _generate(tmp_path: Path, lines: list[bytes], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"".join(x + b"\n" for x in lines))
    return _run(["generate", "--input", str(inp), "--out", str(tmp_path / "out" / "o.jsonl")], capsys)


def test_non_utf8_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, err = _generate(tmp_path, [b'{"prompt": "ok"}', b'{"prompt": "caf\xe9"}'], capsys)
    assert rc == 2 and "tbr: error:" in err and "in.jsonl:2" in err and "UTF-8" in err


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"messages": "hello"}, "non-empty list"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"messages": [{"role": "user", "content": 3}]}, "content"),
        ({"messages": ["hi"]}, "not an object"),
        ({"messages": []}, "non-empty list"),
    ],
)
def test_bad_messages(tmp_path: Path, capsys: pytest.CaptureFixture, row: dict, says: str) -> None:
    rc, err = _generate(tmp_path, [b'{"prompt": "fine"}', json.dumps(row).encode()], capsys)
    assert rc == 2 and "tbr: error:" in err and "in.jsonl:2" in err and says in err


@pytest.mark.parametrize("verb", ["generate", "eval", "reflect", "general"])
@pytest.mark.parametrize("where", ["proc", "file"])
def test_out_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture, verb: str, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = Path("/proc/tbr-x") if where == "proc" else blocker
    if verb == "generate":
        inp = tmp_path / "in.jsonl"
        inp.write_text('{"prompt": "hi"}\n')
        argv = ["generate", "--input", str(inp), "--out", str(bad / "o.jsonl")]
    elif verb == "eval":
        argv = ["eval", "--suites", "demo", "--limit", "1", "--out", str(bad)]
    elif verb == "reflect":
        argv = ["reflect", "--safety-source", "demo-safety", "--n", "2", "--out", str(bad)]
    else:
        argv = ["general", "--tasks", "arc_easy", "--limit", "2", "--out", str(bad)]
    rc, err = _run(argv, capsys)
    assert rc == 2 and "tbr: error:" in err and str(bad) in err and "--out" in err
