"""Defect 7: smaller input and setting faults that used to pass silently."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from tbr.cli import main
from tbr.errors import ConfigError

NO_MODEL = ["--model", "no-such/model-xyz"]


def _generate(
    tmp_path: Path, rows: list[dict], capsys: pytest.CaptureFixture, *extra: str
) -> tuple[int, str]:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = main(["generate", "--input", str(inp), "--out", str(tmp_path / "o.jsonl"), *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ([{"prompt": None}], "`prompt` must be a string"),  # used to be answered as the text "None"
        ([{"prompt": 42}], "`prompt` must be a string"),
        ([{"messages": [{"role": "wizard", "content": "hi"}]}], "role 'wizard'"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "id 'a' already used on line 1"),
    ],
)
def test_bad_rows_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, rows: list[dict], says: str
) -> None:
    rc, err = _generate(tmp_path, rows, capsys, *NO_MODEL)
    assert rc == 2 and "tbr: error:" in err and "in.jsonl:" in err and says in err


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "-1"), ("--top-p", "2"), ("--top-p", "0")])
def test_bad_sampling_settings(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str) -> None:
    rc, err = _generate(tmp_path, [{"prompt": "hi"}], capsys, flag, value, *NO_MODEL)
    assert rc == 2 and "tbr: error:" in err and flag.lstrip("-").replace("-", "_") in err


def test_negative_temperature_in_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["eval", "--suites", "demo", "--temperature", "-1", "--out", str(tmp_path), *NO_MODEL])
    assert rc == 2 and "temperature" in capsys.readouterr().err


@pytest.mark.slow
def test_edited_prompt_under_the_same_id_replaces_its_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    args = ("--max-new-tokens", "3")
    assert (
        _generate(
            tmp_path, [{"id": "q1", "prompt": "Name a fruit."}, {"id": "q2", "prompt": "Hi."}], capsys, *args
        )[0]
        == 0
    )
    with caplog.at_level(logging.WARNING):
        rc, _ = _generate(
            tmp_path,
            [{"id": "q1", "prompt": "Name a car brand."}, {"id": "q2", "prompt": "Hi."}],
            capsys,
            *args,
        )
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2"]  # one answer per id, in input order
    assert rows[0]["messages"][-1]["content"] == "Name a car brand."
    assert "q1" in caplog.text and "replaced" in caplog.text


def test_unset_key_variable_is_an_error_for_a_remote_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from tbr.generate.openai import OpenAIBackend

    monkeypatch.delenv("TBR_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="TBR_TEST_KEY"):
        OpenAIBackend("https://api.example.invalid/v1", "m", api_key_env="TBR_TEST_KEY", preflight=False)
    # A loopback server needs no key: that stays allowed.
    OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="TBR_TEST_KEY", preflight=False)


def test_credentials_in_a_url_never_reach_manifest_or_log(tmp_path: Path) -> None:
    from tbr.config import write_manifest
    from tbr.generate import BackendConfig
    from tbr.generate.openai import OpenAIBackend

    url = "http://alice:s3cr3t-pw@127.0.0.1:9/v1"
    b = OpenAIBackend(url, "m", preflight=False)
    assert "s3cr3t-pw" not in b.base_url and "s3cr3t-pw" not in json.dumps(b.manifest())
    write_manifest(tmp_path, "generate", BackendConfig(api_base=url), models=[b.manifest()])
    assert "s3cr3t-pw" not in (tmp_path / "manifest.json").read_text()


def test_external_reflection_needs_an_endpoint_or_a_model() -> None:
    from tbr.reflect import ReflectConfig

    with pytest.raises(ConfigError, match="--api-base"):
        ReflectConfig(source="external").validate()
    ReflectConfig(source="external", api_base="http://127.0.0.1:8000/v1", api_model="q").validate()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_all_error_judge_run_exits_nonzero_with_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tbr.generate.openai import OpenAIBackend
    from tbr.judge.llm import LLMJudge

    # The real XSTest LLM judge at a port where nothing listens: every verdict is an error.
    dead = OpenAIBackend(
        f"http://127.0.0.1:{_dead_port()}/v1", "judge", preflight=False, max_retries=0, timeout=5
    )
    monkeypatch.setattr("tbr.judge.make_judge", lambda name, **kw: LLMJudge(dead))
    with caplog.at_level(logging.WARNING):
        rc = main(
            [
                "eval",
                "--suites",
                "demo",
                "--limit",
                "1",
                "--max-new-tokens",
                "2",
                "--judge",
                "llm",
                "--out",
                str(tmp_path),
            ]
        )
    assert rc == 1
    assert "only errors" in caplog.text
