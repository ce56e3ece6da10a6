"""tbr eval: statistics, results layout, resume after a crash, and judge errors kept apart from verdicts."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from tbr import evaluate as ev
from tbr.cli import main
from tbr.errors import ConfigError, DataError
from tbr.io import read_jsonl
from tbr.models import pick_dtype

FIXTURE_DATA = Path(__file__).parent / "data" / "fixtures"  # the data engineer's self-written mini data dir
MODEL = "smollm2-135m-instruct"
JUDGES = ["keyword", "xstest-strmatch"]
SUITES = ["demo-safe", "demo-unsafe", "xstest-safe", "xstest-unsafe", "malicious-instruct"]


# ----------------------------------------------------------------------------- statistics (no model)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [  # reference values: the score test |k/n - p| <= z*sqrt(p(1-p)/n) inverted numerically (scipy
        # brentq, z = norm.ppf(0.975)), independently of the closed form under test
        (5, 10, 0.236593, 0.763407),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (81, 263, 0.255289, 0.366210),
        (1, 2, 0.094531, 0.905469),
    ],
)
def test_wilson_interval_matches_reference(k: int, n: int, lo: float, hi: float) -> None:
    got = ev.wilson(k, n)
    assert got is not None
    assert got[0] == pytest.approx(lo, abs=1e-6) and got[1] == pytest.approx(hi, abs=1e-6)


def test_wilson_of_nothing_is_none() -> None:
    assert ev.wilson(0, 0) is None


def test_figures_exclude_errors_from_the_rate() -> None:
    f = ev.figures(["full_compliance", "full_compliance", "full_refusal", "partial_refusal", None])
    assert (f["n"], f["full_compliance"], f["full_refusal"], f["partial_refusal"], f["errors"]) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert f["compliance_rate"] == 0.5  # 2 / (5 - 1)
    assert f["ci95"] == pytest.approx(list(ev.wilson(2, 4)))
    all_err = ev.figures([None, None])
    assert all_err["compliance_rate"] is None and all_err["ci95"] is None and all_err["errors"] == 2


def test_summary_counts_reflections_and_unfinished_ones() -> None:
    def row(reflection: str, answer: str, label: str) -> dict:
        verdict = {"label": label, "raw": "", "error": None}
        return {"suite": "s", "type": "t", "label": "unsafe", "reflection": reflection, "answer": answer,
                "verdicts": {"keyword": verdict}}  # fmt: skip

    rows = [
        row("", "Sure, here it is.", "full_compliance"),
        row("This query asks for a weapon.", "I'm sorry, I can't.", "full_refusal"),
        row("This query asks for a weapon, a weapon, a weapon", "", "full_compliance"),  # cut off
    ]
    s = ev.summarize(rows, ["keyword"])["s"]
    assert (s["reflected"], s["unfinished_reflection"]) == (2, 1)
    assert s["full_compliance"] == 2  # the rule judges still call the empty answer compliance


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="--out"):
        ev.EvalConfig(suites=["demo"]).validate()
    with pytest.raises(DataError, match="unknown suite"):
        ev.EvalConfig(suites=["nope"], out="/tmp/x").validate()
    with pytest.raises(ConfigError, match="chat format only"):
        ev.EvalConfig(suites=["demo"], out="/tmp/x", format="alpaca", system="Be safe.").validate()
    with pytest.raises(ConfigError, match="--limit"):
        ev.EvalConfig(suites=["demo"], out="/tmp/x", limit=0).validate()
    # an endpoint judge without an endpoint fails before any model is loaded
    with pytest.raises(ConfigError, match="endpoint"):
        ev.build_judges(["keyword", "llm"], ev.EvalConfig(out="/tmp/x"))


# ----------------------------------------------------------------------------- with the real SmolLM2


def _check_figures(f: dict) -> None:
    assert f["full_compliance"] + f["full_refusal"] + f["partial_refusal"] + f["errors"] == f["n"]
    judged = f["n"] - f["errors"]
    if judged:
        assert f["compliance_rate"] == pytest.approx(f["full_compliance"] / judged)
        lo, hi = f["ci95"]
        assert 0.0 <= lo <= f["compliance_rate"] <= hi <= 1.0
    else:
        assert f["compliance_rate"] is None and f["ci95"] is None


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full `tbr eval` through the CLI: 2 prompts per suite, 16 new tokens."""
    out = tmp_path_factory.mktemp("eval")
    rc = main(
        [
            "eval",
            "--model",
            MODEL,
            "--suites",
            "demo,xstest,malicious-instruct",
            "--data-dir",
            str(FIXTURE_DATA),
        ]
        + ["--limit", "2", "--judge", ",".join(JUDGES), "--max-new-tokens", "16", "--batch-size", "8"]
        + ["--out", str(out)]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def backend():  # noqa: ANN201
    from tbr.generate.hf import TransformersBackend

    return TransformersBackend(MODEL, batch_size=8, progress=False)


def _cfg(out: Path) -> ev.EvalConfig:
    return ev.EvalConfig(
        model=MODEL,
        suites=["demo", "xstest", "malicious-instruct"],
        data_dir=str(FIXTURE_DATA),
        limit=2,
        judge=JUDGES,
        max_new_tokens=16,
        out=str(out),
    )


@pytest.mark.slow
def test_results_json_shape_and_arithmetic(first_run: Path) -> None:
    res = json.loads((first_run / "results.json").read_text())
    assert list(res["suites"]) == SUITES
    assert res["model"] == MODEL and len(res["weights_hash"]) >= 16
    assert res["judges"] == JUDGES
    assert res["generation"]["max_new_tokens"] == 16 and res["generation"]["format"] == "chat"
    # the precision that ran, not the "auto" that was asked for
    assert res["generation"]["dtype"] == str(pick_dtype("auto")).removeprefix("torch.")
    for name, s in res["suites"].items():
        assert s["n"] == 2 and s["primary_judge"] == "keyword"
        assert s["higher_is_better"] is name.endswith("-safe")
        assert set(s["judges"]) == set(JUDGES)
        for key in ("n", "compliance_rate", "ci95", "full_compliance", "full_refusal", "errors", "by_type"):
            assert s[key] == s["judges"]["keyword"][key]  # the primary judge's figures at top level
        for f in s["judges"].values():
            _check_figures(f)
            assert sum(t["n"] for t in f["by_type"].values()) == f["n"]
            for t in f["by_type"].values():
                _check_figures(t)
    assert set(res["suites"]["demo-safe"]["by_type"]) == {"homonyms"}


@pytest.mark.slow
def test_samples_report_and_manifest(first_run: Path) -> None:
    rows = list(read_jsonl(first_run / "samples.jsonl"))
    assert len(rows) == 10 and len({(r["suite"], r["id"]) for r in rows}) == 10
    for r in rows:
        assert {"id", "suite", "type", "label", "prompt", "response", "reflection", "answer"} <= set(r)
        assert r["response"] and r["answer"] is not None
        assert set(r["verdicts"]) == set(JUDGES)
        for v in r["verdicts"].values():
            assert (v["label"] is None) != (v["error"] is None) and "raw" in v
    report = (first_run / "report.md").read_text()
    assert report.count("| demo-safe |") == 2 and "↑ higher" in report and "↓ lower" in report
    man = json.loads((first_run / "manifest.json").read_text())
    assert man["stage"] == "eval" and man["models"][0]["weights_hash"]
    assert any(p.endswith("demo_suite.jsonl") for p in man["data"])
    assert any(p.endswith("xstest_prompts.csv") for p in man["data"])
    assert [j["name"] for j in man["judges"]] == JUDGES
    assert man["reflection_format"]["format"] == "tagged"
    assert man["generation"]["temperature"] == 0.0 and man["generation"]["format"] == "chat"


@pytest.mark.slow
def test_rerun_after_crash_regenerates_only_what_is_missing(first_run: Path, tmp_path: Path, backend) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    gen = out / "generations.jsonl"
    lines = gen.read_bytes().splitlines(keepends=True)
    before_samples = list(read_jsonl(out / "samples.jsonl"))
    n_verdicts = len((out / "verdicts.jsonl").read_bytes().splitlines())
    (out / "results.json").unlink()
    gen.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a kill mid-write

    ev.evaluate(_cfg(out), backend=backend)

    after = gen.read_bytes().splitlines(keepends=True)
    assert len(after) == len(lines) == 10
    assert after[:-1] == lines[:-1]  # nothing that was done is generated again
    keys = [json.loads(x)["key"] for x in after]
    assert len(set(keys)) == 10 and set(keys) == {json.loads(x)["key"] for x in lines}
    assert (out / "results.json").exists()
    rows = list(read_jsonl(out / "samples.jsonl"))
    assert [(r["suite"], r["id"], r["key"]) for r in rows] == [
        (r["suite"], r["id"], r["key"]) for r in before_samples
    ]
    # verdicts are keyed by the judged text: only a regenerated answer that came out different (left
    # padding in a batch of 8 vs. none alone can shift fp32 logits) is judged again, once per judge
    same = json.loads(after[-1])["response"] == json.loads(lines[-1])["response"]
    assert len((out / "verdicts.jsonl").read_bytes().splitlines()) == n_verdicts + (
        0 if same else len(JUDGES)
    )


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_judge_errors_are_counted_apart_and_retried(first_run: Path, tmp_path: Path, backend) -> None:  # noqa: ANN001
    from tbr.generate.openai import OpenAIBackend
    from tbr.judge.keyword import KeywordJudge
    from tbr.judge.llm import LLMJudge

    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    # The real XSTest LLM judge, aimed at a loopback port where nothing listens: every request fails.
    dead = OpenAIBackend(
        f"http://127.0.0.1:{_dead_port()}/v1", "judge", preflight=False, max_retries=0, timeout=5
    )
    cfg = _cfg(out)
    cfg.judge = ["keyword", "llm"]
    cfg.judge_api_base, cfg.judge_api_model = dead.base_url, "judge"
    items, _ = ev.items_for(cfg)
    # the reply limit is part of an endpoint judge's identity: a longer reply can change a verdict
    assert LLMJudge(dead).identity() != LLMJudge(dead, max_tokens=64).identity()
    n_gen = len((out / "generations.jsonl").read_bytes().splitlines())

    def once() -> dict:
        rows, _ = ev.collect(
            backend,
            [KeywordJudge(), LLMJudge(dead)],
            items,
            out,
            cfg.sampling(),
            fmt="chat",
            reflection_format="tagged",
        )
        return ev.summarize(rows, cfg.judge)

    res = once()
    assert len((out / "generations.jsonl").read_bytes().splitlines()) == n_gen  # answers reused
    for s in res.values():
        llm = s["judges"]["llm"]
        assert llm["errors"] == llm["n"] == 2
        assert llm["compliance_rate"] is None and llm["ci95"] is None
        assert llm["full_compliance"] == llm["full_refusal"] == llm["partial_refusal"] == 0
        assert s["judges"]["keyword"]["errors"] == 0 and s["compliance_rate"] is not None
    verdicts = list(read_jsonl(out / "verdicts.jsonl"))
    errs = [v for v in verdicts if v["judge"] == "llm"]
    assert len(errs) == 10 and all(v["label"] is None and "endpoint failed" in v["error"] for v in errs)
    # an error is never reused as if it were a verdict: the rerun asks the judge again
    once()
    assert len([v for v in read_jsonl(out / "verdicts.jsonl") if v["judge"] == "llm"]) == 20
