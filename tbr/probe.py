"""`tbr probe`: the paper's Table 1 — Direct vs. CoT system prompts on XSTest (§3, Figs. 6-7).

Four compliance rates per model: XSTest-safe (↑) and XSTest-unsafe (↓) under each template, with
Wilson intervals, written as a Table 1 row (table1.json, table1.md) plus per-sample rows, a manifest
and timings. Answering and judging are tbr.evaluate's machinery; only the prompts differ.

Placement of the template. The paper calls Figs. 6-7 a "system prompt" but both end in "Question:",
so the query must follow that word, and it does not say how models without a system role (Gemma-1,
one of its five models) got it. We send ONE user turn "{template} {query}":
  * "Question:" is then immediately followed by the question, as the template reads;
  * it works the same for every chat template, with or without a system role, so rows for different
    models stay comparable (Gemma's template rejects a system turn outright);
  * the model's own default system prompt (Qwen2.5 adds one) stays in place, as in ordinary use.
The choice is recorded in the manifest and table1.json (`placement`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr import suites
from tbr.config import opt, write_manifest
from tbr.evaluate import Item, ScoreConfig, score, write_samples
from tbr.generate import Backend, chat
from tbr.io import write_json_atomic
from tbr.prompts import COT_SYSTEM, DIRECT_SYSTEM

log = logging.getLogger(__name__)

TEMPLATES = {"direct": DIRECT_SYSTEM, "cot": COT_SYSTEM}
SUITES = ("xstest-safe", "xstest-unsafe")
PLACEMENT = "user: '{template} {query}' in one user turn (no system turn added)"
# The paper's column order: XSTest-S Direct ↑, XSTest-S CoT ↑, XSTest-H Direct ↓, XSTest-H CoT ↓.
COLUMNS = [(s, t) for s in SUITES for t in TEMPLATES]


@dataclass
class ProbeConfig(ScoreConfig):
    # The paper's rule (refusal keywords anywhere, Fig. 12) is primary; XSTest's prefix rule is second.
    judge: list[str] = opt(["keyword", "xstest-strmatch"], "comma-separated judges; the first is primary")


def prompt_text(template: str, query: str) -> str:
    return f"{template} {query}"


def items_for(cfg: ProbeConfig) -> tuple[list[Item], list[Path]]:
    items, files = [], []
    for suite in SUITES:
        records = suites.load(suite, cfg.data_dir, cfg.limit)
        files += suites.files(suite, cfg.data_dir)
        for name, template in TEMPLATES.items():
            items += [Item(f"{name}/{suite}", r, chat(prompt_text(template, r.prompt))) for r in records]
    return items, files


def _cell(f: dict[str, Any]) -> str:
    if f["compliance_rate"] is None:
        return "–"
    lo, hi = f["ci95"]
    return f"{f['compliance_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def table_md(model: str, groups: dict[str, dict[str, Any]], judges: list[str]) -> str:
    names = {"xstest-safe": "XSTest-S", "xstest-unsafe": "XSTest-H", "direct": "Direct", "cot": "CoT"}
    arrow = {"xstest-safe": "↑", "xstest-unsafe": "↓"}
    head = "| model | judge | " + " | ".join(f"{names[s]} {names[t]} {arrow[s]}" for s, t in COLUMNS)
    lines = [head + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for j in judges:
        cells = [_cell(groups[f"{t}/{s}"]["judges"][j]) for s, t in COLUMNS]
        lines.append(f"| {model} | {j} | " + " | ".join(cells) + " |")
    n = {s: groups[f"direct/{s}"]["n"] for s in SUITES}
    errors = sum(g["judges"][j]["errors"] for g in groups.values() for j in judges)
    return (
        "\n".join(lines) + f"\n\nCompliance rate with 95% Wilson interval; n = {n['xstest-safe']} safe, "
        f"{n['xstest-unsafe']} unsafe prompts per template; judge errors (excluded from rates): {errors}.\n"
    )


def probe(cfg: ProbeConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Run the four cells into cfg.out and return the table1.json content."""
    cfg.validate()
    out = Path(cfg.out)  # type: ignore[arg-type]
    items, files = items_for(cfg)
    t0 = time.perf_counter()
    scored = score(cfg, items, fmt="chat", system=None, reflection_format="tagged", backend=backend)
    wall = round(time.perf_counter() - t0, 1)
    header, groups = scored["header"], scored["suites"]
    timing = {**scored["manifest_extra"]["timing"], "wall_s": wall, "prompts": len(items)}
    primary = cfg.judge[0]
    row = {  # the primary judge's four figures, in the paper's column order
        f"{s}/{t}": {
            k: groups[f"{t}/{s}"]["judges"][primary][k] for k in ("compliance_rate", "ci95", "n", "errors")
        }
        | {"judge": primary}
        for s, t in COLUMNS
    }
    table = {
        **header,
        "placement": PLACEMENT,
        "templates": TEMPLATES,
        "row": row,
        "groups": groups,  # every judge's figures per template and suite
        "timing": timing,
    }
    write_json_atomic(out / "table1.json", table)
    md = table_md(header["model"], groups, cfg.judge)
    (out / "table1.md").write_text(f"# Table 1 analogue: {header['model']}\n\n{md}")
    write_samples(out / "samples.jsonl", scored["rows"])
    extra = {**scored["manifest_extra"], "timing": timing, "placement": PLACEMENT, "templates": TEMPLATES}
    write_manifest(out, "probe", cfg, models=scored["models"], data_files=files, extra=extra)
    return table


def run(cfg: ProbeConfig) -> int:
    table = probe(cfg)
    print(Path(cfg.out, "table1.md").read_text(), end="")  # type: ignore[arg-type]
    log.info(
        "wrote %s/table1.json, table1.md, samples.jsonl, manifest.json (%.0f s)",
        cfg.out,
        table["timing"]["wall_s"],
    )
    return 0
