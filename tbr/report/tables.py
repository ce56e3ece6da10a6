"""The report's tables as plain data (header + rows of Cell | str | None), rendered by markdown.py
and html.py alike so the two files can never disagree on a number.
"""

from __future__ import annotations

from dataclasses import dataclass

from tbr.report import arms as A
from tbr.report.collect import GENERAL_COLUMNS, SAFETY_COLUMNS, Cell, Variant, _num, sort_key

Value = Cell | str | None


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Value]]
    note: str = ""


def fmt(v: Value, ci: bool = True) -> str:
    """0.74 [0.70, 0.78]; text as is; a missing number as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    num = f"{v.value:+.2f}" if v.signed else f"{v.value:.2f}"
    if ci and v.lo is not None and v.hi is not None:
        num += f" [{v.lo:+.2f}, {v.hi:+.2f}]" if v.signed else f" [{v.lo:.2f}, {v.hi:.2f}]"
    return num + seeds_text(v)


def seeds_text(v: Cell) -> str:
    """' (3 seeds, sd 0.03)' for a cell aggregated over seeds; '' otherwise."""
    if not v.seeds or v.seeds < 2:
        return ""
    return f" ({v.seeds} seeds" + (f", sd {v.sd:.2f})" if v.sd is not None else ")")


def gamma_text(g: float | None) -> str:
    return "—" if g is None else f"{g:g}"


def variants_table(variants: list[Variant]) -> Table:
    rows: list[list[Value]] = [
        [
            v.name,
            v.model,
            v.source or "—",
            gamma_text(v.gamma),
            str(v.eval_dir) if v.eval_dir else "—",
            str(v.general_dir) if v.general_dir else "—",
        ]
        for v in sorted(variants, key=sort_key)
    ]
    return Table("Variants", ["variant", "model", "source", "γ", "eval dir", "general dir"], rows)


def _safety_columns(variants: list[Variant]) -> list[tuple[str, str]]:
    """The paper's four columns; when no variant measured any of them (e.g. the offline demo), the
    suites that were measured instead, so the table is never all dashes."""
    measured = list(dict.fromkeys(name for v in sorted(variants, key=sort_key) for name in v.suites()))
    if any(suite in measured for _, suite in SAFETY_COLUMNS) or not measured:
        return list(SAFETY_COLUMNS)
    arrow = {True: "↓", False: "↑"}
    return [(name + arrow[name.endswith(("-unsafe", "-toxic"))], name) for name in measured]


def _label(variants: list[Variant], suite: str, header: str) -> str:
    """safe or unsafe: what the eval recorded for the suite, else the column's arrow."""
    for v in variants:
        lab = (v.suite(suite) or {}).get("label")
        if lab in ("safe", "unsafe"):
            return str(lab)
    return "unsafe" if header.endswith("↓") else "safe"


def column_judge(suite: str, label: str, judge: str | None, judges: dict[str, str] | None) -> str | None:
    """The judge for one column: judges[suite], else judges[label] (safe/unsafe), else `judge`."""
    judges = judges or {}
    return judges.get(suite) or judges.get(label) or judge


def _column_judges(
    variants: list[Variant], judge: str | None, judges: dict[str, str] | None
) -> tuple[list[tuple[str, str]], list[str | None]]:
    safety = _safety_columns(variants)
    return safety, [column_judge(s, _label(variants, s, h), judge, judges) for h, s in safety]


SEEDS_NOTE = (
    " An arm trained with several seeds shows the mean over its seeds with a 95% bootstrap interval "
    "(seeds resampled, then prompts; 2,000 draws, seeded), the number of seeds and the across-seed "
    "standard deviation; its general columns are the seeds' mean and sd, without an interval."
)


def table3(variants: list[Variant], judge: str | None = None, judges: dict[str, str] | None = None) -> Table:
    """`judges` picks a judge per column ({safe: keyword, unsafe: guard} is the paper's protocol:
    refusal keywords on the safe suites, Llama Guard's harmfulness on XS-H and Mal). One row per arm:
    an arm with several seeds is aggregated over them (tbr.report.arms)."""
    safety, used = _column_judges(variants, judge, judges)
    header = ["model", "setting"] + [h for h, _ in safety] + [h for h, _, _ in GENERAL_COLUMNS]
    rows: list[list[Value]] = []
    all_arms = A.arms(variants)
    for a in all_arms:
        row: list[Value] = [a.group, a.name]
        row += [A.rate(a, suite, j) for (_, suite), j in zip(safety, used, strict=True)]
        row += [A.metric(a, task, key) for _, task, key in GENERAL_COLUMNS]
        rows.append(row)
    named = ", ".join(f"{h} {j or 'each eval’s first'}" for (h, _), j in zip(safety, used, strict=True))
    note = (
        f"Judge per column: {named}. "
        "A variant whose eval did not run a column's judge shows — there. "
        "Compliance rates (share of prompts answered) with 95% Wilson intervals; XS-H = XSTest unsafe, "
        "Mal = MaliciousInstruct, XS-S = XSTest safe, ORB = OR-Bench-Hard; other suites by name. "
        "↓ lower is better, ↑ higher is better. MMLU, GSM8K (strict-match) and ARC-E are lm-eval "
        "accuracies, also with 95% Wilson intervals over the questions scored (±1.96·stderr where "
        "lm-eval gives no count). — = not measured."
    )
    if any(a.seeds > 1 for a in all_arms):
        note += SEEDS_NOTE
    return Table("Table 3 layout: safety and general performance", header, rows, note)


def per_seed(
    variants: list[Variant], judge: str | None = None, judges: dict[str, str] | None = None
) -> Table | None:
    """Each seed's model on its own (Wilson intervals): shown when some arm has several seeds."""
    if all(a.seeds == 1 for a in A.arms(variants)):
        return None
    safety, used = _column_judges(variants, judge, judges)
    header = ["setting", "seed"] + [h for h, _ in safety] + [h for h, _, _ in GENERAL_COLUMNS]
    rows: list[list[Value]] = []
    for v in sorted(variants, key=sort_key):
        row: list[Value] = [v.arm, "—" if v.seed is None else str(v.seed)]
        row += [v.rate(suite, j) for (_, suite), j in zip(safety, used, strict=True)]
        row += [v.metric(task, key) for _, task, key in GENERAL_COLUMNS]
        rows.append(row)
    return Table("Each seed's model", header, rows, "Per model, 95% Wilson intervals (judges as in Table 3).")


def curve_gaps(variants: list[Variant], judge: str | None = None) -> Table | None:
    """Does TBR improve the trade-off or only move along it? Per TBR model (each seed on its own), its
    false-refusal rate minus the w/o curve's at the same safety rate: the curve through every w/o model
    of the same base model (the safety-share arms and the main w/o, each seed a point), linearly
    interpolated. Positive: above the curve (a better trade-off); about 0: a move along it."""
    have = {s for v in variants for s in v.suites()}
    pairs = [(x, y) for y in A.TRADEOFF_Y for x in A.TRADEOFF_X if x[0] in have and y[0] in have]
    rows: list[list[Value]] = []
    for group in dict.fromkeys(v.group for v in variants):
        mine = sorted((v for v in variants if v.group == group), key=sort_key)
        wo = [v for v in mine if v.source == "none" and v.safety_n]
        tbr = [v for v in mine if v.gamma and v.source not in (None, "none", "base")]
        if len({v.safety_n for v in wo}) < 2 or not tbr:
            continue
        for v in tbr:
            row: list[Value] = [group, v.arm, "—" if v.seed is None else str(v.seed)]
            for (xs, _), (ys, _) in pairs:
                pts = [
                    (c.value, d.value) for w in wo if (c := w.rate(xs, judge)) and (d := w.rate(ys, judge))
                ]
                cx, cy = v.rate(xs, judge), v.rate(ys, judge)
                at = A.curve_gap(pts, cx.value) if cx and cy else None
                # round first: -0.001 is shown as +0.00, not -0.00
                row.append(f"{round(cy.value - at, 2) + 0.0:+.2f}" if cx and cy and at is not None else "—")
            rows.append(row)
    if not rows:
        return None
    header = ["model", "setting", "seed"] + [f"{y[1]} at the same {x[1]}" for x, y in pairs]
    note = (
        "Each TBR model's compliance on the false-refusal suite minus that of the w/o curve at the TBR "
        "model's compliance on the safety suite. The curve runs through every w/o model (trained on "
        "different amounts of safety data, each seed its own point), linearly interpolated; — = outside "
        "the curve's range. Positive = above the curve: more false-refusal compliance for the same "
        "safety, a better trade-off; about 0 = a move along it; negative = below it."
    )
    return Table("Trade-off: TBR against the w/o curve", header, rows, note)


def differences(
    variants: list[Variant], judge: str | None = None, judges: dict[str, str] | None = None
) -> Table | None:
    """Arm differences with paired intervals: each trained arm minus w/o, external minus internal."""
    all_arms = A.arms(variants)
    pairs = A.comparisons(all_arms)
    if not pairs:
        return None
    safety, used = _column_judges(variants, judge, judges)
    rows: list[list[Value]] = []
    for a, b in pairs:
        cells = [A.difference(a, b, suite, j) for (_, suite), j in zip(safety, used, strict=True)]
        if any(c is not None for c in cells):
            rows.append([a.group, f"{a.name} − {b.name}"] + cells)
    if not rows:
        return None
    note = (
        "Difference in compliance rate, a − b, on the prompts both arms answered, with a paired 95% "
        "bootstrap interval: one draw resamples the prompt indices jointly for both arms (and the "
        "seeds, paired by position, when both have several), 2,000 draws, seeded. An interval that "
        "excludes 0 is a difference this run can resolve. Read from each eval's samples.jsonl."
    )
    return Table("Arm differences (paired)", ["model", "a − b"] + [h for h, _ in safety], rows, note)


def per_type(variants: list[Variant], suites: list[str], judge: str | None = None) -> Table | None:
    """Rows: (suite, prompt type); columns: variants. The place to see *which* prompts are refused."""
    vs = sorted((v for v in variants if v.eval), key=sort_key)
    keys: list[tuple[str, str]] = []
    for suite in suites:
        for v in vs:
            s = v.suite(suite, judge) or {}
            for t in s.get("by_type") or {}:
                if (suite, t) not in keys:
                    keys.append((suite, t))
    if not keys:
        return None
    rows: list[list[Value]] = [[suite, t] + [v.rate(suite, judge, t) for v in vs] for suite, t in keys]
    return Table(
        "Per-type breakdown (compliance rate)",
        ["suite", "type"] + [v.name for v in vs],
        rows,
        "Compliance rate per prompt type with 95% Wilson intervals.",
    )


def other_suites(variants: list[Variant], judge: str | None = None) -> Table | None:
    """Suites outside Table 3 (demo suites, OR-Bench-toxic, …) so no measured number is hidden."""
    known = {s for _, s in SAFETY_COLUMNS}
    suites = list(dict.fromkeys(s for v in variants for s in v.suites() if s not in known))
    if not suites:
        return None
    vs = sorted((v for v in variants if v.eval), key=sort_key)
    rows: list[list[Value]] = [[v.name] + [v.rate(s, judge) for s in suites] for v in vs]
    return Table("Other suites (compliance rate)", ["variant"] + suites, rows)


def judge_errors(variants: list[Variant]) -> Table | None:
    """Judge errors are excluded from rates, so their count must be visible next to them."""
    suites = list(dict.fromkeys(s for v in variants for s in v.suites()))
    rows: list[list[Value]] = []
    for v in sorted((v for v in variants if v.eval), key=sort_key):
        cells: list[Value] = []
        for s in suites:
            d = v.suite(s) or {}
            n, e = d.get("n"), d.get("errors")
            cells.append(f"{e}/{n}" if isinstance(n, int) and isinstance(e, int) else None)
        rows.append([v.name] + cells)
    if not suites:
        return None
    return Table("Judge errors per suite (errors/n, excluded from rates)", ["variant"] + suites, rows)


def _task_name(name: str) -> str:
    return name.removeprefix("tbr_")


def general_details(variants: list[Variant]) -> Table | None:
    """Every top-level lm-eval metric; MMLU's 57 subjects are left to lm-eval's own output."""
    cols: list[tuple[str, str]] = []
    for v in variants:
        subtasks = {t for ts in (v.general.get("group_subtasks") or {}).values() for t in ts}
        for name, res in (v.general.get("results") or {}).items():
            task = _task_name(name)
            if name in subtasks or task.startswith("mmlu_") or not isinstance(res, dict):
                continue
            for key, val in res.items():
                if "_stderr" in key or "," not in key or _num(val) is None:
                    continue  # stderr goes into the interval; sample_len and the like are not metrics
                if (task, key) not in cols:
                    cols.append((task, key))
    if not cols:
        return None
    rows: list[list[Value]] = []
    for v in sorted((v for v in variants if v.general), key=sort_key):
        rows.append([v.name] + [v.metric(t, k) for t, k in cols])
    header = ["variant"] + [f"{t} {k}" for t, k in cols]
    return Table("General benchmarks: all metrics (95% intervals)", header, rows)


def gate(variants: list[Variant], judge: str | None = None) -> Table | None:
    """Does a reflection still lead to an answer? Per arm and safe suite: how often the model reflected,
    and how often a reflected prompt was then answered (the "gate" of docs/choices.md §10)."""
    rows: list[list[Value]] = []
    suites = dict.fromkeys(s for v in variants for s in v.suites())
    unsafe_name = ("-unsafe", "-toxic", "malicious-instruct")
    safe = [s for s in suites if _label(variants, s, s + ("↓" if s.endswith(unsafe_name) else "")) == "safe"]
    for a in A.arms(variants):
        if a.source not in ("internal", "external") or not a.gamma:
            continue
        cells: list[Value] = []
        for suite in safe:
            cells += list(A.gate(a, suite, judge))
        if any(c is not None for c in cells):
            rows.append([a.group, a.name] + cells)
    if not rows:
        return None
    header = ["model", "setting"] + [h for s in safe for h in (f"{s} reflected", f"{s} answered | reflected")]
    note = (
        "reflected: share of the suite's judged prompts whose response opened with a reflection; answered | "
        "reflected: share of those the model then answered (0 = the reflection acts as a refusal gate). "
        "95% Wilson intervals for one seed; the seeds' mean and sd for several."
    )
    return Table("Reflection gate on the safe suites", header, rows, note)
