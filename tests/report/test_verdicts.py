"""tbr.report.verdicts on an eval dir written here: judges compared answer by answer."""

from __future__ import annotations

import json
from pathlib import Path

from tbr.report import report
from tbr.report.collect import collect
from tbr.report.verdicts import judge_disagreements


def _verdict(label: str, error: str | None = None) -> dict:
    return {"label": None if error else label, "raw": "", "error": error}


def _eval_dir(tmp_path: Path) -> Path:
    """Six safe answers judged by two judges: keyword and learned differ on two (rows 1 and 2), and
    learned errs on one (row 5, left out of its rate and of the comparison). Rows 0–3 open with a
    reflection: three of them are refusals under keyword; rows 4–5 are plain answers."""
    d = tmp_path / "eval"
    d.mkdir()
    rows = [
        ("This query asks for …", "full_refusal", "full_refusal", None),
        ("This query asks for …", "full_refusal", "full_compliance", None),
        ("This query asks for …", "full_compliance", "full_refusal", None),
        ("This query asks for …", "full_refusal", "full_refusal", None),
        (None, "full_compliance", "full_compliance", None),
        (None, "full_compliance", "full_compliance", "timeout"),
    ]
    with (d / "samples.jsonl").open("w") as f:
        for i, (refl, kw, learned, err) in enumerate(rows):
            s = {"id": f"s{i}", "suite": "xstest-safe", "label": "safe", "prompt": "p", "response": "r",
                 "reflection": refl, "answer": "a",
                 "verdicts": {"keyword": _verdict(kw), "learned": _verdict(learned, err)}}  # fmt: skip
            f.write(json.dumps(s) + "\n")
    suite = {"n": 6, "compliance_rate": 2 / 6, "full_compliance": 2, "full_refusal": 4,
             "partial_refusal": 0, "errors": 0}  # fmt: skip
    results = {"model": "m", "judges": ["keyword", "learned"], "suites": {"xstest-safe": suite}}
    (d / "results.json").write_text(json.dumps(results))
    return d


def test_judges_compared_answer_by_answer_without_errors(tmp_path: Path) -> None:
    _, variants = collect([_eval_dir(tmp_path)])
    t = judge_disagreements(variants)
    assert t is not None and t.header[2:] == ["first judge", "learned (answers judged differently)"]
    (row,) = t.rows
    # keyword complies on rows 2, 4, 5 (3/6); learned on 1, 4 of its five judged rows (2/5); they
    # differ on rows 1 and 2 of the five both judged.
    assert row[1:] == ["xstest-safe", "keyword: 0.50", "0.40 (2/5 differ)"]


def test_report_shows_the_judges_side_by_side(tmp_path: Path) -> None:
    report([str(_eval_dir(tmp_path))], str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Judges side by side" in md and "| keyword: 0.50 | 0.40 (2/5 differ) |" in md
