"""Seeds in the report: arms aggregated over seeds (mean, sd, bootstrap interval), paired differences,
the γ figure with seed bands and the trade-off figure, from eval stage outputs written here on disk
(results.json + samples.jsonl per eval, as `tbr eval` writes them; runs.json as `tbr run` does)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tbr.report import report
from tbr.report.arms import arms, difference, rate
from tbr.report.collect import collect
from tbr.stats import seed_rates

SUITES = {"xstest-safe": ("safe", 40), "xstest-unsafe": ("unsafe", 20), "or-bench-hard": ("safe", 30)}


def _eval_dir(
    d: Path, probs: dict[str, float], rng: random.Random, error_every: int = 0, reflect: float = 0.0
) -> None:
    """An eval stage's output: one verdict per prompt (answered with probability probs[suite]), and
    results.json counted from those verdicts exactly as `tbr eval` does (errors left out of the rate)."""
    d.mkdir(parents=True)
    rows, suites = [], {}
    k = 0
    for suite, (label, n) in SUITES.items():
        counts = {"full_compliance": 0, "full_refusal": 0, "partial_refusal": 0, "errors": 0}
        for i in range(n):
            k += 1
            if error_every and k % error_every == 0:
                verdict = {"label": None, "raw": "", "error": "timeout"}
                counts["errors"] += 1
            else:
                lab = "full_compliance" if rng.random() < probs[suite] else "full_refusal"
                verdict = {"label": lab, "raw": "", "error": None}
                counts[lab] += 1
            # a reflected prompt is refused (the gate), except one in four on the safe suites
            reflection = "The query asks about q." if rng.random() < reflect else None
            if reflection and verdict["label"] == "full_compliance" and (label == "unsafe" or i % 4):
                verdict["label"] = "full_refusal"
                counts["full_compliance"] -= 1
                counts["full_refusal"] += 1
            rows.append({"id": f"{suite}-{i}", "suite": suite, "label": label, "prompt": f"q{i}",
                         "response": "r", "reflection": reflection, "verdicts": {"keyword": verdict}})  # fmt: skip
        judged = n - counts["errors"]
        suites[suite] = {
            "n": n,
            "label": label,
            "compliance_rate": counts["full_compliance"] / judged,
            **counts,
        }
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "results.json").write_text(json.dumps({"model": "m", "judges": ["keyword"], "suites": suites}))


def _general_dir(d: Path, mmlu: float) -> None:
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"results": {"mmlu": {"acc,none": mmlu}}}))


# arm → (variant fields, P(answer) per suite); three seeds each, except base
ARMS = {
    "w/o": ({"source": "none", "gamma": 0.0, "safety_n": 200}, {"xstest-safe": 0.3, "xstest-unsafe": 0.05, "or-bench-hard": 0.2}),
    "internal γ=0.5": ({"source": "internal", "gamma": 0.5, "safety_n": 200}, {"xstest-safe": 0.45, "xstest-unsafe": 0.1, "or-bench-hard": 0.3}),
    "internal γ=1": ({"source": "internal", "gamma": 1.0, "safety_n": 200}, {"xstest-safe": 0.7, "xstest-unsafe": 0.1, "or-bench-hard": 0.5}),
    "w/o n=50": ({"source": "none", "gamma": 0.0, "safety_n": 50, "sweep": "safety_n"}, {"xstest-safe": 0.6, "xstest-unsafe": 0.3, "or-bench-hard": 0.5}),
    "w/o n=400": ({"source": "none", "gamma": 0.0, "safety_n": 400, "sweep": "safety_n"}, {"xstest-safe": 0.15, "xstest-unsafe": 0.0, "or-bench-hard": 0.1}),
}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    rng = random.Random(7)
    variants = [{"name": "base", "model": "m", "source": "base", "gamma": None, "eval_dir": "eval/base"}]
    _eval_dir(root / "eval/base", {"xstest-safe": 0.5, "xstest-unsafe": 0.2, "or-bench-hard": 0.4}, rng)
    for k, (arm, (fields, probs)) in enumerate(ARMS.items()):
        for seed in (0, 1, 2):
            d = f"eval/a{k}-s{seed}"
            reflect = 0.5 * (fields["gamma"] or 0)
            _eval_dir(root / d, probs, rng, error_every=17 if seed == 1 else 0, reflect=reflect)
            _general_dir(root / f"general/a{k}-s{seed}", 0.25 + 0.01 * seed)
            variants.append({"name": f"{arm} · s{seed}", "arm": arm, "seed": seed, "model": "m", **fields,
                             "eval_dir": d, "general_dir": f"general/a{k}-s{seed}"})  # fmt: skip
    (root / "runs.json").write_text(json.dumps({"experiment": "seeds", "variants": variants}))
    return root


def test_an_arm_is_the_mean_over_its_seeds_with_a_bootstrap_interval(run_dir: Path) -> None:
    _, variants = collect([run_dir])
    by = {a.name: a for a in arms(variants)}
    assert by["internal γ=1"].seeds == 3 and by["base"].seeds == 1
    a = by["internal γ=1"]
    c = rate(a, "xstest-safe")
    per_seed = [v.rate("xstest-safe").value for v in a.variants]  # results.json, errors left out
    assert c.value == pytest.approx(sum(per_seed) / 3)
    assert c.lo < c.value < c.hi and c.seeds == 3 and c.sd > 0
    # the same mean from the per-prompt verdicts the bootstrap resamples
    from tbr.report.arms import matrix

    assert seed_rates(matrix(a, "xstest-safe", None)) == pytest.approx(per_seed)
    # one seed: the variant's own Wilson cell, as before seeds existed
    assert rate(by["base"], "xstest-safe") == by["base"].first.rate("xstest-safe")


def test_the_gate_counts_reflected_prompts_that_are_then_answered(run_dir: Path) -> None:
    from tbr.report.arms import Arm, gate

    _, variants = collect([run_dir])
    a = {a.name: a for a in arms(variants)}["internal γ=1"]
    reflected, answered = gate(a, "xstest-safe")
    assert reflected.seeds == 3 and 0 < reflected.value < 1 and 0 < answered.value < 1
    v = a.variants[0]
    rows = [json.loads(line) for line in (v.eval_dir / "samples.jsonl").read_text().splitlines()]
    refl = [s for s in rows if s["suite"] == "xstest-safe" and s["reflection"]]
    expect = sum(s["verdicts"]["keyword"]["label"] == "full_compliance" for s in refl) / len(refl)
    one = gate(Arm(a.name, [v]), "xstest-safe")[1]  # one seed: a Wilson interval
    assert one.value == pytest.approx(expect) and one.lo <= one.value <= one.hi


def test_a_paired_difference_is_narrower_than_the_arms_own_intervals(run_dir: Path) -> None:
    _, variants = collect([run_dir])
    by = {a.name: a for a in arms(variants)}
    d = difference(by["internal γ=1"], by["w/o"], "xstest-safe")
    assert d is not None and d.signed and d.lo < d.value < d.hi
    assert d.value == pytest.approx(rate(by["internal γ=1"], "xstest-safe").value - rate(by["w/o"], "xstest-safe").value, abs=0.02)  # fmt: skip


def test_report_renders_mean_and_interval_per_arm(run_dir: Path, tmp_path: Path) -> None:
    report([str(run_dir)], str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    t3 = md.split("## Table 3 layout")[1].split("\n## ")[0]
    row = next(line for line in t3.splitlines() if line.startswith("| m | internal γ=1 |"))
    # XS-H, Mal (not measured), XS-S, ORB: mean [lo, hi] (3 seeds, sd x)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert re.fullmatch(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\] \(3 seeds, sd \d\.\d\d\)", cells[4]), cells[4]
    assert cells[3] == "—"
    assert re.fullmatch(r"0\.26 \(3 seeds, sd 0\.01\)", cells[6])  # MMLU: mean and sd, no interval
    assert "| m | base |" in t3 and "3 seeds" not in next(x for x in t3.splitlines() if "| base |" in x)
    assert t3.count("| m |") == 1 + len(ARMS)  # one row per arm, not per seed
    diffs = md.split("## Arm differences (paired)")[1].split("\n## ")[0]
    assert re.search(
        r"\| m \| internal γ=1 − w/o \| [+-]\d\.\d\d \[[+-]\d\.\d\d, [+-]\d\.\d\d\] \(3 seeds\)", diffs
    )
    per_seed = md.split("## Each seed's model")[1].split("\n## ")[0]
    assert [line.split("|")[2].strip() for line in per_seed.splitlines() if "| internal γ=1 |" in line] == [
        "0",
        "1",
        "2",
    ]
    gate = md.split("## Reflection gate on the safe suites")[1].split("\n## ")[0]
    # per safe suite: how often the model reflected, and how often it then answered
    assert "| model | setting | xstest-safe reflected | xstest-safe answered \\| reflected |" in gate
    assert [line.split("|")[2].strip() for line in gate.splitlines() if line.startswith("| m |")] == [
        "internal γ=0.5",
        "internal γ=1",
    ]
    html = (tmp_path / "report.html").read_text()
    assert "(3 seeds, sd" in html
    for fig in ("fig_gamma.png", "fig_tradeoff.png", "fig_safe_unsafe.png"):
        assert (tmp_path / fig).stat().st_size > 10_000 and f"({fig})" in md


def test_the_curve_is_interpolated_between_wo_models_never_extrapolated() -> None:
    from tbr.report.arms import curve_gap

    curve = [(0.2, 0.5), (0.0, 0.1), (0.0, 0.3)]  # two seeds at x = 0: their mean
    assert curve_gap(curve, 0.1) == pytest.approx(0.35)
    assert curve_gap(curve, 0.0) == pytest.approx(0.2)
    assert curve_gap(curve, 0.2) == pytest.approx(0.5)
    assert curve_gap(curve, 0.3) is None and curve_gap([], 0.1) is None


def test_each_tbr_model_is_placed_against_the_wo_curve(run_dir: Path, tmp_path: Path) -> None:
    """One row per TBR model (seed), none for w/o models; each cell is the model's XS-S minus the curve
    through all w/o models (n=50, 200, 400, every seed) at the model's XS-H."""
    from tbr.report.arms import curve_gap

    report([str(run_dir)], str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    sec = md.split("## Trade-off: TBR against the w/o curve")[1].split("\n## ")[0]
    assert "| model | setting | seed | XS-S at the same XS-H | ORB at the same XS-H |" in sec
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in sec.splitlines()
        if line.startswith("| m |")
    ]
    assert [(r[1], r[2]) for r in rows] == [
        (a, str(s)) for a in ("internal γ=0.5", "internal γ=1") for s in (0, 1, 2)
    ]
    _, variants = collect([run_dir])
    wo = [v for v in variants if v.source == "none"]
    assert len(wo) == 9
    curve = [(v.rate("xstest-unsafe").value, v.rate("xstest-safe").value) for v in wo]
    for r in rows:
        v = next(x for x in variants if x.arm == r[1] and str(x.seed) == r[2])
        want = v.rate("xstest-safe").value - curve_gap(curve, v.rate("xstest-unsafe").value)
        assert float(r[3]) == pytest.approx(want, abs=0.006)
    # the fixture's γ=1 answers 0.7 of XS-S at 0.1 XS-H (before its reflection gate), the curve ~0.36 there
    assert sum(float(r[3]) for r in rows if r[1] == "internal γ=1") / 3 > 0.05


def test_no_tradeoff_figure_without_a_safety_sweep(tmp_path: Path) -> None:
    rng = random.Random(1)
    _eval_dir(tmp_path / "ev", ARMS["w/o"][1], rng)
    report([str(tmp_path / "ev")], str(tmp_path / "out"))
    assert not (tmp_path / "out" / "fig_tradeoff.png").exists()


def test_a_contrast_arm_is_paired_with_its_twin_without_contrast_rows() -> None:
    from tbr.report.arms import Arm, comparisons
    from tbr.report.collect import Variant

    def arm(name: str, source: str, gamma: float) -> Arm:
        return Arm(name, [Variant(name=name, model="m", group="m", source=source, gamma=gamma)])

    wo, tbr, con = arm("w/o", "none", 0.0), arm("internal γ=1", "internal", 1.0), arm("internal γ=1 (contrast)", "internal", 1.0)  # fmt: skip
    pairs = {(a.name, b.name) for a, b in comparisons([wo, tbr, con])}
    assert pairs == {("internal γ=1", "w/o"), ("internal γ=1 (contrast)", "w/o"), ("internal γ=1 (contrast)", "internal γ=1")}  # fmt: skip
