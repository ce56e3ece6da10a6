"""Read what `tbr run`, `tbr eval` and `tbr general` wrote into one list of variants.

The report is a pure function of these files. Everything is read defensively: stages are optional
(a run may have no general benchmarks), so a missing suite or metric becomes an empty cell ("—"),
never an exception. Only a directory that holds none of the known files is an error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.errors import DataError
from tbr.io import read_jsonl_tolerant
from tbr.stats import wilson

log = logging.getLogger(__name__)

# The paper's Table 3 columns: (header, suite). ↓ = lower is better (unsafe prompts answered).
SAFETY_COLUMNS = [
    ("XS-H↓", "xstest-unsafe"),
    ("Mal↓", "malicious-instruct"),
    ("XS-S↑", "xstest-safe"),
    ("ORB↑", "or-bench-hard"),
]
# (header, lm-eval task, metric). GSM8K's strict-match is lm-eval's headline number; the
# flexible-extract figure (robust to a reflection prefix) is shown in the general-metrics table.
GENERAL_COLUMNS = [
    ("MMLU", "mmlu", "acc,none"),
    ("GSM8K", "gsm8k", "exact_match,strict-match"),
    ("ARC-E", "arc_easy", "acc,none"),
]
# The (safe, unsafe) suite pair that the bars, γ curves and scatter plot use: the first pair any
# variant has. XSTest is the paper's; the demo suites let `make demo` draw the same figures.
SUITE_PAIRS = [("xstest-safe", "xstest-unsafe"), ("demo-safe", "demo-unsafe"), ("or-bench-hard", None)]
SOURCE_ORDER = {"base": 0, "none": 1, "internal": 2, "external": 3}


@dataclass
class Cell:
    """One number with its 95% interval (None where unknown) and sample size."""

    value: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    seeds: int | None = None  # > 1: value is the mean over seeds, [lo, hi] a bootstrap over seeds and prompts
    sd: float | None = None  # the across-seed standard deviation
    signed: bool = False  # a difference between arms: printed with its sign


@dataclass
class Variant:
    name: str
    model: str
    group: str  # what the bars are grouped by: the base model
    source: str | None  # base | none | internal | external | None (unknown, e.g. a bare eval dir)
    gamma: float | None
    eval_dir: Path | None = None
    general_dir: Path | None = None
    eval: dict[str, Any] = field(default_factory=dict)  # results.json of `tbr eval`
    general: dict[str, Any] = field(default_factory=dict)  # results.json of `tbr general` (lm-eval)
    # Several seeds of one arm share `arm` (runs.json "arm"; default: the name) and differ in `seed`.
    arm: str = ""
    seed: int | None = None
    safety_n: int | None = None  # safety samples the model was trained on (the trade-off curve's axis)
    reflection_format: str | None = None
    sweep: str | None = None  # "safety_n": a w/o arm of the trade-off curve, not the γ=0 of the γ curves

    def __post_init__(self) -> None:
        self.arm = self.arm or self.name

    @property
    def judges(self) -> list[str]:
        j = self.eval.get("judges")
        return [str(x) for x in j] if isinstance(j, list) else []

    def suites(self) -> list[str]:
        s = self.eval.get("suites")
        return list(s) if isinstance(s, dict) else []

    def suite(self, name: str, judge: str | None = None) -> dict[str, Any] | None:
        """A suite's figures for `judge` (default: the primary judge, i.e. the top-level figures)."""
        s = (self.eval.get("suites") or {}).get(name)
        if not isinstance(s, dict):
            return None
        if judge is None or (self.judges and self.judges[0] == judge):
            return s
        per = (s.get("judges") or {}).get(judge)
        return per if isinstance(per, dict) else None

    def rate(self, suite: str, judge: str | None = None, type_: str | None = None) -> Cell | None:
        s = self.suite(suite, judge)
        if s is not None and type_ is not None:
            s = (s.get("by_type") or {}).get(type_)
        return rate_cell(s) if isinstance(s, dict) else None

    def task(self, task: str) -> dict[str, Any] | None:
        """lm-eval's results for a task, whether run as lm-eval's own task or tbr's offline copy
        (`tbr general --data-dir` runs tbr_mmlu, tbr_gsm8k, tbr_arc_easy with the plain name as alias)."""
        name = self._task_name(task)
        return self.general["results"][name] if name else None

    def _task_name(self, task: str) -> str | None:
        res = self.general.get("results") or {}
        for name in (task, f"tbr_{task}"):
            if isinstance(res.get(name), dict):
                return name
        return next((k for k, r in res.items() if isinstance(r, dict) and r.get("alias") == task), None)

    def metric(self, task: str, key: str) -> Cell | None:
        name = self._task_name(task)
        if name is None:
            return None
        return metric_cell(self.general["results"][name], key, self._questions(name))

    def _questions(self, name: str) -> int | None:
        """How many questions lm-eval scored for a task: its own count, or its subtasks' summed (a group)."""
        counts = self.general.get("n-samples") or {}
        c = counts.get(name)
        if isinstance(c, dict) and isinstance(c.get("effective"), int):
            return c["effective"]
        subtasks = (self.general.get("group_subtasks") or {}).get(name)
        if not subtasks:
            return None
        parts = [self._questions(t) for t in subtasks]
        return sum(parts) if all(isinstance(p, int) for p in parts) else None  # type: ignore[arg-type]


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) and x else None


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _judged(s: dict[str, Any]) -> int | None:
    """How many items the rate is over: judge errors are excluded from rates (tbr.judge.base)."""
    counts = [s.get(k) for k in ("full_compliance", "full_refusal", "partial_refusal")]
    if all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        return sum(counts)  # type: ignore[arg-type]
    n = s.get("n")
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    errors = s.get("errors")
    return n - errors if isinstance(errors, int) and 0 <= errors <= n else n


def rate_cell(s: dict[str, Any]) -> Cell | None:
    """A compliance rate with the stage's own ci95, or a Wilson interval computed from n."""
    p = _num(s.get("compliance_rate"))
    if p is None:
        return None
    n = _judged(s)
    ci = s.get("ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2 and _num(ci[0]) is not None and _num(ci[1]) is not None:
        lo, hi = float(ci[0]), float(ci[1])
    elif n:
        lo, hi = wilson(p * n, n) or (None, None)
    else:
        lo = hi = None
    return Cell(p, lo, hi, n)


# lm-eval metrics that are a mean of 0/1 scores, one per question: these get a Wilson interval.
BINARY_METRICS = ("acc", "acc_norm", "exact_match")


def metric_cell(res: dict[str, Any], key: str, n: int | None = None) -> Cell | None:
    """An lm-eval metric with its 95% interval.

    A 0/1 accuracy over n known questions gets a Wilson interval, like the compliance rates: lm-eval's
    stderr is the normal approximation, which collapses to [0, 0] at 0/30 (GSM8K at 135M) and is "N/A"
    for groups such as MMLU. Otherwise ±1.96·stderr, or no interval where lm-eval has none.
    """
    v = _num(res.get(key))
    if v is None:
        return None
    name, _, filt = key.partition(",")
    if n and name in BINARY_METRICS and 0.0 <= v <= 1.0:
        lo, hi = wilson(round(v * n), n) or (None, None)
        return Cell(v, lo, hi, n=n)
    se = _num(res.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr"))
    if se is None:
        return Cell(v)
    return Cell(v, max(0.0, v - 1.96 * se), min(1.0, v + 1.96 * se))


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}:1:1: expected a JSON object at top level")
    return data


def _optional_results(d: Path | None, what: str) -> dict[str, Any]:
    if d is None:
        return {}
    path = d / "results.json"
    if not path.is_file():
        # A stage that has not finished (or was skipped) leaves its cells empty rather than failing
        # the whole report, so a report can be drawn while a long run is still going.
        log.warning("%s: no results.json yet; its %s cells are shown as —", d, what)
        return {}
    return _read_json(path)


def _group_of(model: str) -> str:
    """The base model a checkpoint was trained from (tbr saves it in tbr_model.json), else the name."""
    sidecar = Path(model) / "tbr_model.json"
    try:
        if sidecar.is_file():
            base = json.loads(sidecar.read_text()).get("base")
            if isinstance(base, str) and base:
                return base
    except (OSError, json.JSONDecodeError):
        pass
    return Path(model).name if ("/" in model and Path(model).exists()) else model


def _from_runs(run_dir: Path) -> tuple[str | None, list[Variant]]:
    runs_path = run_dir / "runs.json"
    data = _read_json(runs_path)
    rows = data.get("variants")
    if not isinstance(rows, list):
        raise DataError(f"{runs_path}: expected a 'variants' list (written by `tbr run`)")
    out = []
    for i, v in enumerate(rows):
        if not isinstance(v, dict) or not v.get("name"):
            raise DataError(f"{runs_path}: variants[{i}] needs at least a 'name'")

        def sub(key: str, v: dict[str, Any] = v) -> Path | None:
            return run_dir / v[key] if isinstance(v.get(key), str) and v[key] else None

        ev, gen = sub("eval_dir"), sub("general_dir")
        model = str(v.get("model") or "")
        evr = _optional_results(ev, "safety")
        model = model or str(evr.get("model") or "?")
        group = str(v.get("base") or v.get("base_model") or _group_of(model))
        out.append(
            Variant(
                name=str(v["name"]),
                model=model,
                group=group,
                source=v.get("source") if isinstance(v.get("source"), str) else None,
                gamma=_num(v.get("gamma")),
                eval_dir=ev,
                general_dir=gen,
                eval=evr,
                general=_optional_results(gen, "general-benchmark"),
                arm=str(v.get("arm") or ""),
                seed=_int(v.get("seed")),
                safety_n=_int(v.get("safety_n")),
                reflection_format=_str(v.get("reflection_format")),
                sweep=_str(v.get("sweep")),
            )
        )
    exp = data.get("experiment")
    return (str(exp) if exp else None), out


def _from_results_dir(d: Path) -> Variant:
    data = _read_json(d / "results.json")
    if isinstance(data.get("suites"), dict):  # tbr eval
        model = str(data.get("model") or d.name)
        return Variant(d.name, model, _group_of(model), None, None, eval_dir=d, eval=data)
    if isinstance(data.get("results"), dict):  # tbr general (lm-eval)
        summary = d / "summary.json"  # `tbr general` names the model there; lm-eval's own output may not
        model = str(
            data.get("model_name")
            or (_read_json(summary).get("model") if summary.is_file() else None)
            or d.name
        )
        return Variant(d.name, model, _group_of(model), None, None, general_dir=d, general=data)
    raise DataError(
        f"{d / 'results.json'}: neither a `tbr eval` result (no 'suites') nor an lm-eval result (no 'results')"
    )


def collect(run_dirs: list[str | Path]) -> tuple[str | None, list[Variant]]:
    """(experiment name, variants) from `tbr run` dirs (runs.json) and/or bare eval/general dirs."""
    if not run_dirs:
        raise DataError("no run directories given: pass `tbr run` output dirs or `tbr eval` dirs")
    experiment, variants = None, []
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise DataError(f"{d}: not a directory (expected a `tbr run` or `tbr eval` output dir)")
        if (d / "runs.json").is_file():
            exp, vs = _from_runs(d)
            experiment = experiment or exp
            variants += vs
        elif (d / "results.json").is_file():
            variants.append(_from_results_dir(d))
        else:
            raise DataError(
                f"{d}: found neither runs.json (from `tbr run`) nor results.json (from `tbr eval`/`tbr general`)"
            )
    # Names key the sample browser, so they must be unique across run dirs.
    seen: dict[str, int] = {}
    for v in variants:
        if v.name in seen:
            seen[v.name] += 1
            # A second run dir's copy of an arm is a separate arm, not another seed of it.
            v.arm = f"{v.arm} #{seen[v.name]}"
            v.name = f"{v.name} #{seen[v.name]}"
        else:
            seen[v.name] = 1
    return experiment, variants


def sort_key(v: Variant) -> tuple[Any, ...]:
    """Table order: per base model, base < w/o < internal < external, then by γ, safety samples, seed."""
    gamma = v.gamma if v.gamma is not None else -1.0
    return (v.group, SOURCE_ORDER.get(v.source or "", 9), gamma, v.safety_n or 0, v.seed or 0)


def suite_pair(variants: list[Variant]) -> tuple[str | None, str | None]:
    have = {s for v in variants for s in v.suites()}
    for safe, unsafe in SUITE_PAIRS:
        if safe in have:
            return safe, (unsafe if unsafe in have else None)
    return None, None


def load_samples(v: Variant) -> list[dict[str, Any]]:
    if v.eval_dir is None:
        return []
    rows, torn = read_jsonl_tolerant(v.eval_dir / "samples.jsonl")
    if torn:
        log.warning("%s/samples.jsonl: skipped a torn last line (the eval run was cut off)", v.eval_dir)
    return rows


def verdict_label(sample: dict[str, Any], judge: str | None) -> tuple[str | None, str | None]:
    """(label, error) of `judge`'s verdict on a sample (default: its first judge)."""
    verdicts = sample.get("verdicts")
    if not isinstance(verdicts, dict) or not verdicts:
        return None, None
    v = verdicts.get(judge) if judge else next(iter(verdicts.values()))
    if not isinstance(v, dict):
        return None, None
    return v.get("label"), v.get("error")
