"""Arms: the variants of one setting trained with different seeds, aggregated for the report.

An arm with one seed reads exactly like its variant (the stage's own Wilson interval), so one-seed
reports are unchanged. With several seeds a rate is the mean of the seeds' rates, with the across-seed
standard deviation and a 95% bootstrap interval over seeds and prompts (tbr.stats.bootstrap), computed
from the per-prompt verdicts in each eval's samples.jsonl. A difference between two arms is paired:
they answered the same prompts, so it is resampled on the prompts both answered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.report.collect import Cell, Variant, load_samples, sort_key, verdict_label
from tbr.stats import bootstrap, seed_rates, spread

COMPLIANCE = "full_compliance"
# The trade-off's axes: safety (x, lower is safer) against false refusal (y, higher is better).
TRADEOFF_X = [("xstest-unsafe", "XS-H"), ("malicious-instruct", "Mal")]
TRADEOFF_Y = [("xstest-safe", "XS-S"), ("or-bench-hard", "ORB")]


@dataclass
class Arm:
    name: str
    variants: list[Variant] = field(default_factory=list)  # one per seed, in seed order

    @property
    def first(self) -> Variant:
        return self.variants[0]

    @property
    def group(self) -> str:
        return self.first.group

    @property
    def source(self) -> str | None:
        return self.first.source

    @property
    def gamma(self) -> float | None:
        return self.first.gamma

    @property
    def safety_n(self) -> int | None:
        return self.first.safety_n

    @property
    def seeds(self) -> int:
        return len(self.variants)


def arms(variants: list[Variant]) -> list[Arm]:
    """Variants grouped by (base model, arm), in table order."""
    out: dict[tuple[str, str], Arm] = {}
    for v in sorted(variants, key=sort_key):
        out.setdefault((v.group, v.arm), Arm(v.arm)).variants.append(v)
    return list(out.values())


# Samples are read once per file version: every cell of every table reads the same files.
_SAMPLES: dict[tuple[Path, int, int], list[dict[str, Any]]] = {}


def _samples(v: Variant) -> list[dict[str, Any]]:
    if v.eval_dir is None:
        return []
    try:
        st = (v.eval_dir / "samples.jsonl").stat()
    except OSError:
        return []
    key = (v.eval_dir, st.st_mtime_ns, st.st_size)
    if key not in _SAMPLES:
        _SAMPLES[key] = load_samples(v)
    return _SAMPLES[key]


def scores(v: Variant, suite: str, judge: str | None) -> dict[str, float]:
    """prompt id → 1.0 answered, 0.0 refused, NaN not judged (a judge error), from samples.jsonl."""
    out: dict[str, float] = {}
    for s in _samples(v):
        if s.get("suite") != suite:
            continue
        label, error = verdict_label(s, judge or (v.judges[0] if v.judges else None))
        out[str(s.get("id"))] = math.nan if error or label is None else float(label == COMPLIANCE)
    return out


def matrix(arm: Arm, suite: str, judge: str | None, ids: list[str] | None = None) -> list[list[float]] | None:
    """(seeds × prompts) scores over `ids` (default: every prompt any seed answered); None when some
    seed has no per-prompt verdicts for the suite (then only its rate is known)."""
    per = [scores(v, suite, judge) for v in arm.variants]
    if not all(per):
        return None
    ids = ids if ids is not None else list(dict.fromkeys(i for p in per for i in p))
    return [[p.get(i, math.nan) for i in ids] for p in per]


def rate(arm: Arm, suite: str, judge: str | None = None) -> Cell | None:
    """The arm's compliance rate: the variant's own cell for one seed, else the seeds' mean with
    its bootstrap interval and across-seed spread."""
    if arm.seeds == 1:
        return arm.first.rate(suite, judge)
    cells = [v.rate(suite, judge) for v in arm.variants]
    known = [c.value for c in cells if c is not None]
    if not known:
        return None
    m = matrix(arm, suite, judge)
    if m is None or len(known) < arm.seeds:
        # some seed lacks samples.jsonl (or the suite): the mean of the known rates, no interval
        return Cell(sum(known) / len(known), seeds=len(known), sd=spread(known))
    est = bootstrap([m])
    if est is None:
        return None
    value, lo, hi = est
    return Cell(value, lo, hi, n=len(m[0]), seeds=arm.seeds, sd=spread(seed_rates(m)))


def metric(arm: Arm, task: str, key: str) -> Cell | None:
    """An lm-eval metric: the variant's cell, or (several seeds) the mean with its across-seed spread.
    lm-eval's per-question scores are not read, so there is no bootstrap interval here."""
    if arm.seeds == 1:
        return arm.first.metric(task, key)
    vals = [c.value for c in (v.metric(task, key) for v in arm.variants) if c is not None]
    if not vals:
        return None
    return Cell(sum(vals) / len(vals), seeds=len(vals), sd=spread(vals))


def difference(a: Arm, b: Arm, suite: str, judge: str | None = None) -> Cell | None:
    """a − b on a suite's compliance rate, with a paired 95% bootstrap interval (prompts resampled
    jointly; seeds jointly too when the arms have as many). Over the prompts both arms answered."""
    pa = [scores(v, suite, judge) for v in a.variants]
    pb = [scores(v, suite, judge) for v in b.variants]
    if not all(pa) or not all(pb):
        return None
    ids = sorted(set.intersection(*(set(p) for p in pa + pb)))
    if not ids:
        return None
    ma = [[p[i] for i in ids] for p in pa]
    mb = [[p[i] for i in ids] for p in pb]
    est = bootstrap([ma, mb], [1.0, -1.0], paired=True)
    if est is None:
        return None
    value, lo, hi = est
    return Cell(value, lo, hi, n=len(ids), seeds=min(a.seeds, b.seeds), signed=True)


def comparisons(all_arms: list[Arm]) -> list[tuple[Arm, Arm]]:
    """The differences worth a paired interval, per base model: every trained arm against w/o (the
    main γ=0 arm), external against internal at equal γ and format (the paper's claims), and a contrast
    arm against its twin without contrast rows (docs/choices.md §10)."""
    pairs = []
    for group in dict.fromkeys(a.group for a in all_arms):
        mine = [a for a in all_arms if a.group == group]
        wo = next((a for a in mine if a.source == "none" and a.name == "w/o"), None)
        if wo is None:
            wo = next((a for a in mine if a.source == "none"), None)
        for a in mine:
            if wo is not None and a is not wo and a.source not in ("base", None):
                pairs.append((a, wo))
        # a contrast arm against the same arm without the contrast rows: "reflect, then answer" alone
        for c in (a for a in mine if a.name.endswith(" (contrast)")):
            if twin := next((a for a in mine if a.name == c.name.removesuffix(" (contrast)")), None):
                pairs.append((c, twin))
        for ext in (a for a in mine if a.source == "external"):
            twin = ext.name.replace("external", "internal", 1)
            if intern := next((a for a in mine if a.source == "internal" and a.name == twin), None):
                pairs.append((ext, intern))
    return pairs


def gate(arm: Arm, suite: str, judge: str | None = None) -> tuple[Cell | None, Cell | None]:
    """(share of the suite's prompts answered with a reflection, share of those then answered).

    docs/results.md found the reflection acting as a gate: every reflected safe prompt was refused,
    because every reflection in the training data precedes a refusal. A model that learned "reflect,
    then answer" has the second share above 0. One seed: Wilson intervals; several: the seeds' mean
    and sd (the reflected prompts differ between seeds, so there is no paired resample)."""
    from tbr.stats import wilson

    per: list[tuple[int, int, int]] = []  # (prompts judged, reflected, reflected and answered)
    for v in arm.variants:
        rows = [s for s in _samples(v) if s.get("suite") == suite]
        if not rows:
            return None, None
        judged = refl = answered = 0
        for s in rows:
            label, error = verdict_label(s, judge or (v.judges[0] if v.judges else None))
            if error or label is None:
                continue
            judged += 1
            if str(s.get("reflection") or "").strip():
                refl += 1
                answered += label == COMPLIANCE
        per.append((judged, refl, answered))

    def cell(k: list[int], n: list[int]) -> Cell | None:
        if arm.seeds == 1:
            if not n[0]:
                return None
            lo, hi = wilson(k[0], n[0]) or (None, None)
            return Cell(k[0] / n[0], lo, hi, n=n[0])
        rates = [a / b for a, b in zip(k, n, strict=True) if b]
        if not rates:
            return None
        return Cell(sum(rates) / len(rates), seeds=len(rates), sd=spread(rates))

    return cell([r for _, r, _ in per], [j for j, _, _ in per]), cell(
        [a for _, _, a in per], [r for _, r, _ in per]
    )


class ArmVariant(Variant):
    """An arm with several seeds, standing in for a variant in the per-variant figures (bars,
    scatter): its rates and metrics are the arm's aggregates."""

    def __init__(self, arm: Arm) -> None:
        first = arm.first
        super().__init__(
            name=arm.name, model=first.model, group=first.group, source=first.source, gamma=first.gamma,
            eval_dir=None, general_dir=None, eval=first.eval, general=first.general, arm=arm.name,
            safety_n=first.safety_n, reflection_format=first.reflection_format, sweep=first.sweep,
        )  # fmt: skip
        self._arm = arm

    def rate(self, suite: str, judge: str | None = None, type_: str | None = None) -> Cell | None:
        return rate(self._arm, suite, judge) if type_ is None else None

    def metric(self, task: str, key: str) -> Cell | None:
        return metric(self._arm, task, key)


def one_per_arm(variants: list[Variant]) -> list[Variant]:
    """The variants with each multi-seed arm folded into one (its seeds' aggregate)."""
    return [a.first if a.seeds == 1 else ArmVariant(a) for a in arms(variants)]


def curve_gap(curve: list[tuple[float, float]], x: float) -> float | None:
    """The w/o curve's y at x: models at the same x are one point (their mean y), the points are joined
    by straight lines, and outside their x range there is no curve (None, no extrapolation)."""
    by_x: dict[float, list[float]] = {}
    for xx, y in curve:
        by_x.setdefault(xx, []).append(y)
    pts = sorted((xx, sum(ys) / len(ys)) for xx, ys in by_x.items())
    if not pts or not pts[0][0] <= x <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (x - x0) / (x1 - x0) * (y1 - y0)
    return pts[0][1]  # a single point, at exactly x
