"""Where do the judges disagree? Read from the per-sample verdicts (samples.jsonl), not results.json:
two judges can give the same rate while disagreeing on individual answers, so each pair is counted
answer by answer (binary: compliance vs refusal, judge errors left out, as in the rates). The
reflection gate, also read from the samples, is in tbr.report.arms (it aggregates over seeds).
"""

from __future__ import annotations

from typing import Any

from tbr.report.collect import Cell, Variant, load_samples, sort_key, verdict_label
from tbr.report.tables import Table, Value
from tbr.stats import wilson


def _complied(sample: dict[str, Any], judge: str | None) -> bool | None:
    """True/False for a judged answer; None for a judge error or a missing verdict."""
    label, error = verdict_label(sample, judge)
    if error or label is None:
        return None
    return label == "full_compliance"


def _rate(hits: int, n: int) -> Cell | None:
    if not n:
        return None
    lo, hi = wilson(hits, n) or (None, None)
    return Cell(hits / n, lo, hi, n)


def _by_suite(v: Variant) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in load_samples(v):
        out.setdefault(str(s.get("suite") or "?"), []).append(s)
    return out


def _share(samples: list[dict[str, Any]], judge: str | None) -> Cell | None:
    verdicts = [c for c in (_complied(s, judge) for s in samples) if c is not None]
    return _rate(sum(verdicts), len(verdicts))


def _text(c: Cell | None) -> str:
    return "—" if c is None else f"{c.value:.2f}"


def judge_disagreements(variants: list[Variant]) -> Table | None:
    """Per variant and suite: the compliance rate under every judge the eval ran, and how many
    answers the first judge and each other judge call differently."""
    rows: list[list[Value]] = []
    others: list[str] = []
    for v in sorted((v for v in variants if v.eval_dir is not None and len(v.judges) > 1), key=sort_key):
        first, rest = v.judges[0], v.judges[1:]
        others += [j for j in rest if j not in others]
        for suite, samples in _by_suite(v).items():
            cells: list[Value] = [v.name, suite, f"{first}: {_text(_share(samples, first))}"]
            for j in rest:
                pairs = [(_complied(s, first), _complied(s, j)) for s in samples]
                both = [(a, b) for a, b in pairs if a is not None and b is not None]
                differ = sum(a != b for a, b in both)
                cells.append(f"{_text(_share(samples, j))} ({differ}/{len(both)} differ)")
            rows.append(cells)
    if not rows:
        return None
    header = ["variant", "suite", "first judge"] + [f"{j} (answers judged differently)" for j in others]
    rows = [r + [None] * (len(header) - len(r)) for r in rows]
    return Table(
        "Judges side by side (compliance rate; answers the first judge and this one call differently)",
        header,
        rows,
        note="Binary verdicts (compliance vs refusal) compared answer by answer; judge errors are left out.",
    )
