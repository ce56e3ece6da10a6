"""`tbr judge agreement --protocol lomo`: leave-one-model-out agreement with human labels.

Each completions file is one model's answers. Every judge is scored on each file separately; a learned
judge is refitted per file on the other files only (tbr.judge.train.lomo_verdicts), with the features,
encoder and C grid of the judge directory it names, so no score includes a row its judge was fitted
on. The rule judges need no fitting and are scored on the same rows. The last block pools all held-out
rows (each still judged by a judge that never saw it).

    tbr judge agreement --protocol lomo --judge keyword,xstest-strmatch,learned --out runs/judge-lomo
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tbr.config import write_manifest
from tbr.io import write_json_atomic
from tbr.judge.base import Verdict

log = logging.getLogger(__name__)

POOLED = "all (pooled)"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| held-out model | judge | n | errors | binary agreement | binary kappa | accuracy (3-class) | kappa (3-class) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group, per_judge in results.items():
        for name, r in per_judge.items():
            lines.append(
                f"| {group} | {name} | {r['n']} | {r['errors']} | {_fmt(r['binary_agreement'])} | "
                f"{_fmt(r['binary_kappa'])} | {_fmt(r['accuracy'])} | {_fmt(r['kappa'])} |"
            )
    return "\n".join(lines)


def run_lomo(cfg: Any) -> int:
    from tbr.judge import is_learned
    from tbr.judge.agreement import _make_judges, markdown, score
    from tbr.judge.train import default_completions, load_groups, lomo_cross_verdicts, lomo_verdicts

    files = [Path(f) for f in cfg.completions] if cfg.completions else default_completions(cfg.data_dir)
    groups = load_groups(files, cfg.reflection_format)
    if len(groups) < 2:
        from tbr.errors import ConfigError

        raise ConfigError("--protocol lomo needs at least two completions files, one per model")
    judges = _make_judges(cfg)
    held: dict[str, dict[str, list[Verdict]]] = {}
    recipes: dict[str, Any] = {}
    for judge in judges:
        if is_learned(judge.name) and getattr(judge, "design", "linear") == "cross-encoder":
            from tbr.judge.cross import CrossConfig

            cross_cfg = CrossConfig(**judge.meta["cross"])
            held[judge.name], folds = lomo_cross_verdicts(groups, judge.encoder, cross_cfg, name=judge.name)
            recipes[judge.name] = {"refitted_per_fold": True, "cross": judge.meta["cross"], "folds": folds}
        elif is_learned(judge.name):
            # The directory supplies the recipe; its own weights are never used here.
            cs = judge.meta["classifier"]["C_grid"]
            weight = judge.meta["classifier"].get("class_weight", "none")
            held[judge.name] = lomo_verdicts(
                groups, judge.encoder, judge.features, cs, name=judge.name, class_weight=weight
            )
            recipes[judge.name] = {
                "refitted_per_fold": True,
                "features": list(judge.features),
                "encoder": judge.meta["encoder"],
                "C_grid": cs,
                "class_weight": weight,
            }
        else:
            held[judge.name] = {g.name: judge.judge(g.items) for g in groups}
        for g in groups:
            if len(held[judge.name][g.name]) != len(g.items):
                raise RuntimeError(f"judge {judge.name} returned the wrong number of verdicts on {g.name}")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for g in groups:
        results[g.name] = {j.name: score(g.labels, held[j.name][g.name]) for j in judges}
    human_all = [lab for g in groups for lab in g.labels]
    results[POOLED] = {
        j.name: score(human_all, [v for g in groups for v in held[j.name][g.name]]) for j in judges
    }
    print(summary_table(results))
    for group, per_judge in results.items():
        if group != POOLED:
            print(f"\n## held out: {group}\n\n" + markdown(per_judge))
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            out / "agreement.json",
            {"protocol": "lomo", "completions": [f.name for f in files], "held_out": results},
        )
        with (out / "verdicts.jsonl").open("w", encoding="utf-8") as f:
            for g in groups:
                for i, (item, h) in enumerate(zip(g.items, g.labels, strict=True)):
                    row = {
                        "group": g.name,
                        "index": i,
                        "prompt": item.prompt,
                        "response": item.response,
                        "answer": item.answer,
                        "human": h,
                        "verdicts": {j.name: held[j.name][g.name][i].to_dict() for j in judges},
                    }
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        describe = {j.name: {**j.describe(), **recipes.get(j.name, {})} for j in judges}
        write_manifest(
            out,
            "judge-agreement",
            cfg,
            data_files=[str(f) for f in files],
            extra={"protocol": "lomo", "judges": describe},
        )
        print(f"\nwrote {out / 'agreement.json'}")
    return 0
