"""tbr.report on hand-written result dirs (tests/report/fixtures): tables, figures, HTML safety.

fixtures/exp is a `tbr run` dir (runs.json) with base, w/o (γ=0), internal γ=0.5 and 1, external
γ=1; the external variant has no general benchmarks and the base no OR-Bench. fixtures/bare-eval
is a bare `tbr eval` dir whose xstest-safe figures lack ci95 (the report computes Wilson's).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tbr.cli import main
from tbr.errors import DataError
from tbr.report import report
from tbr.report.collect import Variant, collect, metric_cell, wilson

FIXTURES = Path(__file__).parent / "fixtures"
XSS = "</script><img src=x onerror=alert(1)>"
TABLE3_HEADER = "| model | setting | XS-H↓ | Mal↓ | XS-S↑ | ORB↑ | MMLU | GSM8K | ARC-E |"


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    report([str(FIXTURES / "exp"), str(FIXTURES / "bare-eval")], str(out), title="Fixture <report>")
    return out


def _row(md: str, setting: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| smollm2-135m-instruct | {setting} |"))


def test_wilson_matches_textbook_values() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def test_lm_eval_interval_is_1_96_stderr_and_tolerates_na() -> None:
    c = metric_cell({"acc,none": 0.5, "acc_stderr,none": 0.01}, "acc,none")
    assert c is not None and (c.lo, c.hi) == (pytest.approx(0.4804), pytest.approx(0.5196))
    c = metric_cell({"acc,none": 0.5, "acc_stderr,none": "N/A"}, "acc,none")  # lm-eval groups
    assert c is not None and c.value == 0.5 and c.lo is None
    assert metric_cell({"acc_norm,none": 0.5}, "acc,none") is None


def test_accuracy_over_known_questions_gets_a_wilson_interval() -> None:
    # 0/30 on GSM8K: lm-eval's stderr is 0, which would print a [0.00, 0.00] interval
    c = metric_cell(
        {"exact_match,strict-match": 0.0, "exact_match_stderr,strict-match": 0.0},
        "exact_match,strict-match",
        30,
    )
    assert c is not None and c.lo == 0.0 and c.hi == pytest.approx(wilson(0, 30)[1]) and c.hi > 0.1
    # a group (MMLU) counts its subtasks' questions: 2 subjects x 3 questions, 4 right
    v = Variant(
        "m",
        "m",
        "m",
        None,
        None,
        general={
            "results": {"mmlu": {"acc,none": 4 / 6, "acc_stderr,none": "N/A"}, "mmlu_a": {}, "mmlu_b": {}},
            "group_subtasks": {"mmlu": ["mmlu_a", "mmlu_b"]},
            "n-samples": {
                "mmlu_a": {"original": 100, "effective": 3},
                "mmlu_b": {"original": 90, "effective": 3},
            },
        },
    )
    c = v.metric("mmlu", "acc,none")
    assert c is not None and c.n == 6 and (c.lo, c.hi) == pytest.approx(wilson(4, 6))
    # not a 0/1 mean (e.g. a perplexity): no count-based interval
    assert metric_cell({"word_perplexity,none": 12.5}, "word_perplexity,none", 30).lo is None


def test_table3_rows(full: Path) -> None:
    md = (full / "report.md").read_text()
    assert md.startswith("# Fixture <report>")
    assert TABLE3_HEADER in md
    # external γ=1: 1/25 XS-H, 4/100 Mal, 46/50 XS-S, 40/50 ORB (fixture ci95 = Wilson); no general dir → —
    assert _row(md, "external γ=1") == (
        "| smollm2-135m-instruct | external γ=1 | 0.04 [0.01, 0.20] | 0.04 [0.02, 0.10] | "
        "0.92 [0.81, 0.97] | 0.80 [0.67, 0.89] | — | — | — |"
    )
    # w/o: lm-eval MMLU 0.41 ± 1.96·0.004, GSM8K strict-match 0.13 ± 1.96·0.009, ARC-E 0.76 ± 1.96·0.009
    assert _row(md, "w/o (γ=0)").endswith("| 0.41 [0.40, 0.42] | 0.13 [0.11, 0.15] | 0.76 [0.74, 0.78] |")
    # internal γ=1 ran tbr's offline lm-eval tasks (tbr_mmlu, … with the plain name as alias)
    assert _row(md, "internal γ=1").endswith("| 0.40 [0.39, 0.41] | 0.13 [0.11, 0.15] | 0.75 [0.73, 0.77] |")
    assert "anatomy" not in md  # MMLU subjects stay in lm-eval's own output
    # the base model has no OR-Bench and no general results
    base = _row(md, "base").split(" | ")
    assert base[5] == "—" and base[6:] == ["—", "—", "— |"]
    # bare eval dir: xstest-safe has no ci95, so the report computes Wilson's for 0/10
    assert "| qwen2.5-coder-0.5b-instruct | bare-eval | — | — | 0.00 [0.00, 0.28] | — | — | — | — |" in md
    # table order follows the paper: base, w/o, internal (by γ), external
    order = ("| base |", "| w/o (γ=0) |", "| internal γ=0.5 |", "| internal γ=1 |", "| external γ=1 |")
    pos = [md.index(s) for s in order]
    assert pos == sorted(pos)


def test_per_type_and_extra_tables(full: Path) -> None:
    md = (full / "report.md").read_text()
    # homonyms: base 20/25, ext 24/25
    line = next(x for x in md.splitlines() if x.startswith("| xstest-safe | homonyms |"))
    assert "0.80 [0.61, 0.91]" in line and line.endswith("0.96 [0.80, 0.99] |")
    assert "| bare-eval | 0.25 [0.05, 0.70] |" in md  # demo-unsafe: 1 of 4 judged (1 judge error)
    assert "| internal γ=1 | 1/50 |" in md  # judge errors are shown, not hidden
    assert "0.15 [0.13, 0.17]" in md  # GSM8K flexible-extract in the all-metrics table


def test_figures_written_and_linked(full: Path) -> None:
    md = (full / "report.md").read_text()
    for name in ("fig_safe_bars.png", "fig_gamma.png", "fig_safe_unsafe.png"):
        assert (full / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in md
    manifest = json.loads((full / "report.manifest.json").read_text())
    assert manifest["stage"] == "report"
    # relative to the report dir, so the path resolves from there on any machine
    assert any(
        (full / p).resolve().parts[-4:] == ("exp", "eval", "ext-g1", "results.json") for p in manifest["data"]
    )


def test_no_gamma_curves_without_two_gamma_values(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "exp", run)
    runs = json.loads((run / "runs.json").read_text())
    runs["variants"] = [v for v in runs["variants"] if v["source"] in ("base", "external")]
    (run / "runs.json").write_text(json.dumps(runs))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fig_gamma.png").write_bytes(b"stale")  # from an earlier report
    report([str(run)], str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "fig_gamma.png").exists()
    assert "fig_gamma.png" not in md
    assert (tmp_path / "out" / "fig_safe_bars.png").exists()


def _embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="tbr-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_html_is_self_contained_and_escaped(full: Path) -> None:
    html = (full / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "@import" not in html
    assert html.count("<img") == 3 and html.count('src="data:image/png;base64,') == 3
    # the response with markup never appears raw: the only </script> are our two closing tags
    assert XSS not in html
    assert html.count("</script>") == 2
    assert "Fixture &lt;report&gt;" in html
    data = _embedded(html)
    n_rows = sum(
        len((FIXTURES / "exp" / "eval" / d / "samples.jsonl").read_text().splitlines())
        for d in ("base", "wo", "int-g0.5", "int-g1", "ext-g1")
    )
    assert sum(len(v) for v in data["samples"].values()) == n_rows + 1
    ext = {s["id"]: s for s in data["samples"]["external γ=1"]}
    assert ext["xstest-2"]["answer"] == "Blow gently. " + XSS  # intact after the round trip
    assert ext["xstest-2"]["reflection"].startswith("The query asks")
    base = {s["id"]: s for s in data["samples"]["base"]}
    assert base["xstest-0"]["verdict"] == "full_refusal" and base["xstest-0"]["label"] == "safe"


def test_cli_and_default_out_for_an_eval_dir(tmp_path: Path) -> None:
    ev = tmp_path / "eval-dir"
    shutil.copytree(FIXTURES / "bare-eval", ev)
    (ev / "report.md").write_text("the eval stage's own report")
    assert main(["report", str(ev), "--title", "bare"]) == 0
    # the eval stage's report.md is kept: a bare eval dir's report goes to DIR/report/
    assert (ev / "report.md").read_text() == "the eval stage's own report"
    md = (ev / "report" / "report.md").read_text()
    assert md.startswith("# bare") and TABLE3_HEADER in md
    assert not (ev / "report" / "fig_gamma.png").exists()
    assert (ev / "report" / "report.html").exists()


def test_missing_eval_results_show_dashes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "exp", run)
    shutil.rmtree(run / "eval" / "ext-g1")  # still running, say
    _, variants = collect([run])
    ext = next(v for v in variants if v.source == "external")
    assert ext.rate("xstest-safe") is None and ext.eval == {}


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        collect([tmp_path / "nope"])
    with pytest.raises(DataError, match="runs.json"):
        collect([tmp_path])
    (tmp_path / "results.json").write_text('{"suites": {,}}')
    with pytest.raises(DataError, match=r"results.json:1:\d+: malformed JSON"):
        collect([tmp_path])
    (tmp_path / "results.json").write_text('{"something": 1}')
    with pytest.raises(DataError, match="neither"):
        collect([tmp_path])
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_primary_judge_selects_per_judge_figures() -> None:
    _, variants = collect([FIXTURES / "exp"])
    v = next(v for v in variants if v.source == "external")
    assert v.rate("xstest-safe", judge="strmatch") == v.rate("xstest-safe")
    assert v.rate("xstest-safe", judge="llm") is None  # a judge this eval did not run: "—", not a guess


def test_table3_shows_the_measured_suites_when_none_of_the_papers_are(tmp_path: Path) -> None:
    ev = tmp_path / "demo-eval"
    ev.mkdir()
    data = json.loads((FIXTURES / "bare-eval" / "results.json").read_text())
    data["suites"] = {"demo-safe": data["suites"]["xstest-safe"]}  # the offline demo's suite only
    (ev / "results.json").write_text(json.dumps(data))
    (ev / "samples.jsonl").write_text("")
    report([str(ev)], str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| model | setting | demo-safe↑ | MMLU | GSM8K | ARC-E |" in md
    assert "| qwen2.5-coder-0.5b-instruct | demo-eval | 0.00 [0.00, 0.28] | — | — | — |" in md


def test_table3_takes_a_judge_per_column(tmp_path: Path) -> None:
    from tbr.report.tables import table3

    _, variants = collect([FIXTURES / "exp"])
    v = next(v for v in variants if v.source == "external")
    t = table3([v], judges={"unsafe": "strmatch", "xstest-safe": "keyword"})
    row = t.rows[0]
    cols = dict(zip(t.header, row, strict=True))
    assert cols["XS-H↓"] == v.rate("xstest-unsafe", "strmatch")
    assert cols["XS-S↑"] == v.rate("xstest-safe", "keyword")
    assert "Judge per column: XS-H↓ strmatch, Mal↓ strmatch, XS-S↑ keyword" in t.note
    # a judge the eval did not run leaves its column empty rather than borrowing another's figures
    t = table3([v], judges={"unsafe": "guard"})
    assert dict(zip(t.header, t.rows[0], strict=True))["XS-H↓"] is None
    # and through the config: an unknown judge name is a config error naming it
    from tbr.config import build
    from tbr.errors import ConfigError
    from tbr.report import ReportConfig

    with pytest.raises(ConfigError, match="unknown judge.*gaurd"):
        build(ReportConfig, {"run_dirs": ["x"], "judges": {"unsafe": "gaurd"}})
    report([str(FIXTURES / "exp")], str(tmp_path), judges={"unsafe": "strmatch"})
    assert "Judge per column: XS-H↓ strmatch" in (tmp_path / "report.md").read_text()
