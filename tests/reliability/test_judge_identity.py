"""Defect 4: a verdict is reused only by the judge that gave it, not by any judge of the same name.

The verdict cache used to be keyed by the judge's name (plus endpoint, model, reply limit), so a
keyword judge with other refusal strings silently reused the default judge's verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tbr import evaluate as ev
from tbr.judge.keyword import KeywordJudge
from tests.reliability.conftest import load_backend

pytestmark = pytest.mark.slow


def _cfg(out: Path) -> ev.EvalConfig:
    return ev.EvalConfig(suites=["demo"], limit=2, judge=["keyword"], max_new_tokens=6, out=str(out))


def _samples(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_a_judge_with_other_rules_judges_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = load_backend("fp32")
    ev.evaluate(_cfg(tmp_path), backend=backend)
    assert not any(r["verdicts"]["keyword"]["raw"] in ("e", " ") for r in _samples(tmp_path))
    # Same name, other rules: every answer contains a letter "e" or a space, so all are refusals now.
    monkeypatch.setattr("tbr.judge.make_judge", lambda name, **kw: KeywordJudge(["e", " "]))
    second = ev.evaluate(_cfg(tmp_path), backend=backend)
    rows = _samples(tmp_path)
    assert rows and all(r["verdicts"]["keyword"]["raw"] in ("e", " ") for r in rows if r["answer"])
    assert sum(s["full_refusal"] for s in second["suites"].values()) > 0


def test_identity_covers_rules_prompt_and_reply_limit() -> None:
    from tbr.generate.openai import OpenAIBackend
    from tbr.judge.llm import LLMJudge
    from tbr.judge.strmatch import StrmatchJudge

    assert KeywordJudge().identity() == KeywordJudge().identity()
    assert KeywordJudge().identity() != KeywordJudge(["I can't"]).identity()
    assert KeywordJudge().identity() != StrmatchJudge().identity()
    dead = OpenAIBackend("http://127.0.0.1:9/v1", "judge", preflight=False)
    assert LLMJudge(dead).identity() != LLMJudge(dead, max_tokens=64).identity()
    assert LLMJudge(dead).identity() != LLMJudge(dead, full_response=True).identity()
