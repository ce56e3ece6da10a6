"""`tbr probe`: the paper's Table 1 — Direct vs. CoT system prompts on XSTest (§3, Figs. 6-7).

Four compliance rates per model: XSTest-safe (↑) and XSTest-unsafe (↓) under each template, with
Wilson intervals, written as a Table 1 row (table1.json, table1.md) plus per-sample rows, a manifest
and timings. Answering and judging are tbr.evaluate's machinery; only the prompts differ.

Placement of the template (`--placement`). The paper calls Figs. 6-7 "system prompts", so the
default is `system`: the template is the system turn (it replaces the model's own default system
prompt, e.g. Qwen2.5's) and the bare query is the user turn, so "Question:" ends the system prompt and
the question follows in the next turn. A chat template without a system role (Gemma-1, one of the
paper's five models, rejects one) falls back to `user` for that model, and the manifest and
table1.json say so (`placement.used`, `placement.fallback`). `user` sends ONE user turn
"{template} {query}" and keeps the model's default system prompt; it is what tbr did before, and on
Qwen2.5-Coder-0.5B it changes the rates well beyond noise (docs/results.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr import suites
from tbr.config import opt, write_manifest
from tbr.data import PromptRecord
from tbr.evaluate import Item, ScoreConfig, score, write_samples
from tbr.generate import Backend, Conversation, chat, make_backend
from tbr.io import write_json_atomic
from tbr.prompts import COT_SYSTEM, DIRECT_SYSTEM

log = logging.getLogger(__name__)

TEMPLATES = {"direct": DIRECT_SYSTEM, "cot": COT_SYSTEM}
SUITES = ("xstest-safe", "xstest-unsafe")
PLACEMENTS = {
    "system": "system: the template as the system turn (replacing the model's default), the query as the user turn",
    "user": "user: '{template} {query}' in one user turn (no system turn added)",
}
# The paper's column order: XSTest-S Direct ↑, XSTest-S CoT ↑, XSTest-H Direct ↓, XSTest-H CoT ↓.
COLUMNS = [(s, t) for s in SUITES for t in TEMPLATES]


@dataclass
class ProbeConfig(ScoreConfig):
    # The paper's rule (refusal keywords anywhere, Fig. 12) is primary; XSTest's prefix rule is second.
    judge: list[str] = opt(["keyword", "xstest-strmatch"], "comma-separated judges; the first is primary")
    placement: str = opt(
        "system",
        "where the Fig. 6-7 template goes: the system turn (the paper's 'system prompt') or one user turn",
        choices=tuple(PLACEMENTS),
    )


def prompt_text(template: str, query: str) -> str:
    return f"{template} {query}"


def conversation(template: str, query: str, placement: str) -> Conversation:
    if placement == "system":
        return chat(query, template)
    return chat(prompt_text(template, query))


def system_role_ok(backend: Any) -> bool:
    """Whether the model's chat template takes a system turn and keeps its text.

    Only a local tokenizer can be asked; an endpoint applies its own template, so we trust it."""
    tok = getattr(backend, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        return True
    probe_text = "tbr-system-probe"
    try:
        text = tok.apply_chat_template(
            [{"role": "system", "content": probe_text}, {"role": "user", "content": "hi"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # noqa: BLE001 - jinja raises TemplateError (Gemma: "System role not supported")
        return False
    return probe_text in text  # some templates drop a system turn silently


def placement_info(asked: str, backend: Any) -> dict[str, Any]:
    used, fallback = asked, None
    if asked == "system" and not system_role_ok(backend):
        used = "user"
        fallback = "the chat template has no system role, so the template went into the user turn"
        log.warning("%s: %s", getattr(backend, "model_id", "model"), fallback)
    return {"asked": asked, "used": used, "fallback": fallback, "rule": PLACEMENTS[used]}


def records_for(cfg: ProbeConfig) -> tuple[dict[str, list[PromptRecord]], list[Path]]:
    records, files = {}, []
    for suite in SUITES:
        records[suite] = cfg.load_suite(suite)
        files += suites.files(suite, cfg.data_dir)
    return records, files


def items_for(records: dict[str, list[PromptRecord]], placement: str) -> list[Item]:
    items = []
    for suite, recs in records.items():
        for name, template in TEMPLATES.items():
            items += [Item(f"{name}/{suite}", r, conversation(template, r.prompt, placement)) for r in recs]
    return items


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
    records, files = records_for(cfg)  # data errors surface before the model loads
    t0 = time.perf_counter()
    backend = backend or make_backend(cfg)
    placement = placement_info(cfg.placement, backend)
    items = items_for(records, placement["used"])
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
        "placement": placement,
        "templates": TEMPLATES,
        "row": row,
        "groups": groups,  # every judge's figures per template and suite
        "timing": timing,
    }
    write_json_atomic(out / "table1.json", table)
    md = table_md(header["model"], groups, cfg.judge)
    note = f"Placement: {placement['rule']}" + (
        f" ({placement['fallback']})" if placement["fallback"] else ""
    )
    (out / "table1.md").write_text(f"# Table 1 analogue: {header['model']}\n\n{md}\n{note}.\n")
    write_samples(out / "samples.jsonl", scored["rows"])
    extra = {**scored["manifest_extra"], "timing": timing, "placement": placement, "templates": TEMPLATES}
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
