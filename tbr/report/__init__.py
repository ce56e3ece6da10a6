"""`tbr report RUN_DIR...`: report.md + a self-contained report.html from finished (or running) runs.

Inputs are files only: `tbr run` dirs (runs.json naming each variant's eval/general dirs) and bare
`tbr eval` / `tbr general` dirs (one variant each, named after the dir). Outputs, into --out:
  report.md, report.html    the paper's Table 3 layout, Figures 3-4 style plots, a safe-vs-unsafe
                            scatter, the per-type breakdown; the HTML adds a sample browser
  fig_*.png                 the plots (report.md links them; the HTML embeds them as base64)
  report.manifest.json      what was read (with hashes) and the config; named apart from
                            manifest.json because the run dir already holds the run's manifest
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.config import opt

log = logging.getLogger(__name__)

# Responses can be long; the browser is for reading examples, results.json keeps the counts.
MAX_TEXT = 6000


@dataclass
class ReportConfig:
    run_dirs: list[str] = opt([], "`tbr run` or `tbr eval` output dirs", positional=True, nargs="+")
    out: str | None = opt(
        None, "where report.md/report.html go (default: the first RUN_DIR; RUN_DIR/report for an eval dir)"
    )
    title: str | None = opt(None, "report title (default: the experiment name)")
    primary_judge: str | None = opt(
        None, "judge whose verdicts the report shows (default: each eval's first)"
    )
    judges: dict[str, str] = opt(
        {},
        "Table 3 judge per column: {safe: keyword, unsafe: guard} or by suite {xstest-unsafe: guard} "
        "(YAML only; default: primary_judge for every column)",
        cli=False,
    )

    def validate(self) -> None:
        check_judges(list(self.judges.values()))


def check_judges(names: list[str]) -> None:
    """ConfigError naming any judge that is neither a known name nor `learned:DIR`."""
    from tbr.errors import ConfigError
    from tbr.judge import JUDGES

    if bad := [n for n in names if n not in JUDGES and not n.startswith("learned:")]:
        raise ConfigError(f"unknown judge(s) {', '.join(bad)}; choose from: {', '.join(JUDGES)}, learned:DIR")


def _clip(text: Any) -> Any:
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return text[:MAX_TEXT] + f"… [{len(text) - MAX_TEXT} more characters in samples.jsonl]"
    return text


def _browser_data(variants: list[Any], judge: str | None) -> dict[str, Any]:
    from tbr.report.collect import load_samples, sort_key, verdict_label

    variants = sorted(
        (v for v in variants if v.eval_dir is not None), key=sort_key
    )  # general-only: no samples
    samples = {}
    for v in variants:
        rows = []
        for s in load_samples(v):
            label, error = verdict_label(s, judge or (v.judges[0] if v.judges else None))
            rows.append(
                {
                    "id": str(s.get("id", "")),
                    "suite": str(s.get("suite") or "?"),
                    "type": s.get("type"),
                    "label": s.get("label"),
                    "prompt": _clip(str(s.get("prompt") or "")),
                    "response": _clip(str(s.get("response") or "")),
                    "reflection": _clip(s.get("reflection")),
                    # the answer is the response minus the reflection: only worth storing when they differ
                    "answer": _clip(s.get("answer")) if s.get("answer") != s.get("response") else None,
                    "verdict": label,
                    "error": error,
                    "verdicts": {
                        j: {k: _clip(d.get(k)) for k in ("label", "raw", "error")}
                        for j, d in (s.get("verdicts") or {}).items()
                        if isinstance(d, dict)
                    },
                }
            )
        samples[v.name] = rows
    return {
        "judge": judge,
        "variants": [
            {"name": v.name, "model": v.model, "source": v.source, "gamma": v.gamma} for v in variants
        ],
        "samples": samples,
    }


def default_out(run_dirs: list[str]) -> Path:
    first = Path(run_dirs[0])
    # A bare eval dir already has the eval stage's own report.md and manifest.json: don't clobber them.
    return first if (first / "runs.json").is_file() else first / "report"


def report(
    run_dirs: list[str],
    out: str | None = None,
    *,
    title: str | None = None,
    primary_judge: str | None = None,
    judges: dict[str, str] | None = None,
) -> Path:
    """Write report.md, report.html and the figures into `out`; return the report.html path."""
    from tbr.config import write_manifest
    from tbr.report import html, markdown, plots, tables, verdicts
    from tbr.report.arms import one_per_arm
    from tbr.report.collect import collect, suite_pair

    experiment, variants = collect(run_dirs)
    out_dir = Path(out) if out else default_out(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = title or (f"TBR report: {experiment}" if experiment else "TBR report")
    judge = primary_judge
    safe, unsafe = suite_pair(variants)

    # Bars and scatter: one bar or point per arm (a multi-seed arm as its seeds' mean and interval).
    folded = one_per_arm(variants)
    figures: list[tuple[str, Path]] = []
    for caption, name, draw in [
        (f"Compliance on {safe} per variant (Figure 3 style)", "fig_safe_bars.png",
         lambda p: plots.bars(folded, safe, p, judge) if safe else None),
        ("Compliance and MMLU vs γ (Figure 4 style; the paper's curves in the last panel)", "fig_gamma.png",
         lambda p: plots.gamma_curves(variants, safe, unsafe, p, judge)),
        (f"{safe} vs {unsafe} compliance, one point per variant", "fig_safe_unsafe.png",
         lambda p: plots.scatter(folded, safe, unsafe, p, judge)),
        ("Trade-off: w/o at several safety-data sizes against TBR", "fig_tradeoff.png",
         lambda p: plots.tradeoff(variants, p, judge)),
    ]:  # fmt: skip
        path = out_dir / name
        path.unlink(missing_ok=True)  # a figure that no longer applies must not linger from a rerun
        if draw(path):
            figures.append((caption, path))

    type_suites = [s for s in (safe, unsafe) if s]
    all_tables = [tables.variants_table(variants), tables.table3(variants, judge, judges)]
    all_tables += [
        t
        for t in (
            tables.differences(variants, judge, judges),
            tables.per_seed(variants, judge, judges),
            tables.curve_gaps(variants, judge),
            tables.gate(variants, judge),
            tables.per_type(variants, type_suites, judge),
            tables.other_suites(variants, judge),
            tables.judge_errors(variants),
            verdicts.judge_disagreements(variants),
            tables.general_details(variants),
        )
        if t is not None
    ]
    meta = [
        f"generated {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} from "
        + ", ".join(str(d) for d in run_dirs),
        f"{len(variants)} variant(s); primary judge: {judge or 'each eval’s first judge'}",
    ]
    if experiment:
        meta.insert(0, f"experiment: {experiment}")

    md = markdown.render(title, meta, all_tables, [(c, p.name) for c, p in figures])
    (out_dir / "report.md").write_text(md, encoding="utf-8")
    page = html.render(title, meta, all_tables, figures, _browser_data(variants, judge))
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")

    read = [d / "results.json" for v in variants for d in (v.eval_dir, v.general_dir) if d is not None]
    read += [Path(d) / "runs.json" for d in run_dirs]
    cfg = ReportConfig(
        run_dirs=[str(d) for d in run_dirs],
        out=str(out_dir),
        title=title,
        primary_judge=judge,
        judges=dict(judges or {}),
    )
    write_manifest(
        out_dir,
        "report",
        cfg,
        data_files=read,
        extra={"figures": [p.name for _, p in figures]},
        filename="report.manifest.json",
    )
    log.info("wrote %s and %s", out_dir / "report.md", html_path)
    return html_path


def run(cfg: ReportConfig) -> int:
    from tbr.errors import ConfigError

    if not cfg.run_dirs:
        raise ConfigError("give at least one RUN_DIR (a `tbr run` or `tbr eval` output directory)")
    path = report(cfg.run_dirs, cfg.out, title=cfg.title, primary_judge=cfg.primary_judge, judges=cfg.judges)
    print(f"wrote {path.parent / 'report.md'} and {path}")
    return 0
