"""`tbr build`: the TBR fine-tuning set (paper §4.1, §5.2, §7.1): general Alpaca data + safety refusals,
a share γ of which carry a safety reflection before the refusal.

Which safety samples get a reflection is deterministic and nested in γ: the safety samples are ranked by a
seeded hash of their id and the first round(γ·n) get one, so the γ=0.4 set is inside the γ=0.6 set and
the safety prompts themselves are the same at every γ (only their targets change). The paper leaves this
choice open (§2.5 of docs/paper.md).

With --contrast DIR (a `tbr contrast` output; beyond the paper) the general rows drawn there carry their
benign reflection, joined in the same format as the safety rows, before their ordinary answer
(`kind: contrast`); they replace as many ordinary general rows.

Output: DIR/train.jsonl (loadable with `datasets.load_dataset("json", ...)`; TRL prompt-completion rows,
either the Figure 10 Alpaca strings or conversational messages) and DIR/manifest.json.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError
from tbr.io import read_jsonl, sha256_text, stable_hash, write_jsonl_atomic
from tbr.prompts import STANDARD_REFUSAL, alpaca_prompt
from tbr.reflection import REFLECTION_FORMATS, join

log = logging.getLogger(__name__)

TEMPLATES = ("alpaca", "chat")


@dataclass
class BuildConfig:
    gamma: float = opt(
        1.0, "share of safety samples whose target carries a reflection (0 = baseline, 1 = TBR)"
    )
    reflections: str | None = opt(None, "a `tbr reflect` output dir (needed unless gamma is 0)")
    contrast: str | None = opt(
        None, "a `tbr contrast` output dir: its general rows get reflection + ordinary answer (kind contrast)"
    )
    safety_source: str = opt(
        "stl-safety", "with gamma 0 and no --reflections: stl-safety, hh-rlhf, demo-safety or a file"
    )
    categorizer: str = opt(
        "keyword", "categorizer for --safety-source (keyword or embed here)", choices=("keyword", "embed")
    )
    safety_n: int = opt(200, "safety samples (-1: all usable)")
    general_source: str = opt(
        "alpaca-demo", "alpaca-demo, alpaca-tiny, demo (built in), an Alpaca file, or a comma list of them"
    )
    general_n: int = opt(1800, "general samples (-1: all)")
    template: str = opt(
        "alpaca", "alpaca (Figure 10 strings) or chat (TRL conversational)", choices=TEMPLATES
    )
    reflection_format: str = opt("tagged", "how reflection and refusal join", choices=REFLECTION_FORMATS)
    refusal: str | None = opt(None, "refusal text (default: the one the reflections used, else Figure 9's)")
    data_dir: str | None = opt(None, "data directory (default: $TBR_DATA_DIR)")
    seed: int = opt(0, "seed for sampling, the reflected subset and the shuffle")
    out: str = opt("runs/build", "output directory")
    show: int = opt(0, "print this many samples (a mix of kinds) after building")

    def validate(self) -> None:
        if not isinstance(self.gamma, int | float) or not 0.0 <= self.gamma <= 1.0 or math.isnan(self.gamma):
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("safety_n", "general_n"):
            v = getattr(self, name)
            if v < -1:
                raise ConfigError(f"{name} must be a count or -1 (all), got {v}")
        if self.gamma > 0 and not self.reflections:
            raise ConfigError(f"gamma={self.gamma} needs --reflections DIR (made by `tbr reflect`)")
        if self.refusal is not None and not self.refusal.strip():
            raise ConfigError("the refusal text is empty")
        if self.show < 0:
            raise ConfigError(f"show must be >= 0, got {self.show}")


def n_reflected(gamma: float, n: int) -> int:
    """round(γ·n), halves rounded up (Python's round() would round 0.5 to even)."""
    return int(math.floor(gamma * n + 0.5))


def reflected_ids(ids: list[str], gamma: float, seed: int) -> set[str]:
    """The nested, seeded subset of safety ids that carry a reflection."""
    from tbr.categories import seeded_order

    order = seeded_order(ids, seed, "gamma")
    return {ids[i] for i in order[: n_reflected(gamma, len(ids))]}


# --------------------------------------------------------------------------- inputs


def _safety_pool(cfg: BuildConfig) -> tuple[list[dict[str, Any]], list[Path], dict[str, Any]]:
    """Safety candidates: usable reflections from a reflect dir, or (γ=0) prompts straight from the source."""
    if cfg.reflections:
        rdir = Path(cfg.reflections)
        path = rdir / "reflections.jsonl"
        if not path.is_file():
            raise DataError(f"{rdir} has no reflections.jsonl; make it with `tbr reflect --out {rdir}`")
        rows = list(read_jsonl(path))
        usable = [r for r in rows if r.get("kept") and (r.get("reflection") or "").strip()]
        if not usable:
            raise DataError(
                f"{path}: no usable reflections ({len(rows)} rows, 0 kept after the audit; see "
                f"{rdir / 'audit.json'}). Rerun `tbr reflect` with --audit keep, another model or more prompts"
            )
        info: dict[str, Any] = {"reflections_rows": len(rows), "reflections_usable": len(usable)}
        mpath = rdir / "manifest.json"
        if mpath.is_file():
            m = json.loads(mpath.read_text())
            info["reflection_source"] = m.get("config", {}).get("source")
            info["reflection_models"] = m.get("models")
            cats = (m.get("safety_data") or {}).get("categories") or {}
            # which keyword asset (and encoder) assigned the categories the sample is stratified by
            info["categories"] = {k: cats.get(k) for k in ("method", "keywords_asset", "encoder", "coverage")}
        return usable, [path], info
    from tbr.categories import CATEGORIES
    from tbr.data.safety import load_safety

    prompts, report, files = load_safety(cfg.safety_source, cfg.data_dir, cfg.categorizer)
    pool = [
        {
            "id": p.id,
            "instruction": p.instruction,
            "input": p.input,
            "category": p.category,
            "source": p.source,
            "reflection": None,
        }
        for p in prompts
        if p.category in CATEGORIES  # `other` (with its reason) is never a refusal target
    ]
    return pool, files, {"safety_data": report}


def _general(cfg: BuildConfig) -> tuple[list[dict[str, Any]], list[Path]]:
    return general_pool(cfg.general_source, cfg.data_dir)


def general_pool(source: str, data_dir: str | None) -> tuple[list[dict[str, Any]], list[Path]]:
    """General instructions from one source or a comma-separated list (concatenated in the order given).
    Row ids (`<source>-<index>`) are what the contrast stage's rows are matched back by."""
    from tbr.data import data_files, load_instructions
    from tbr.data.safety import BUILTIN_SOURCES

    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    for name in [s.strip() for s in str(source).split(",") if s.strip()]:
        src: str | Path = BUILTIN_SOURCES.get(name, name)
        records = load_instructions(src, data_dir)
        if not records:
            raise DataError(f"general source {name!r} is empty")
        files += [Path(src)] if isinstance(src, Path) else data_files(src, data_dir)
        tag = Path(src).stem if name.endswith((".json", ".jsonl")) else name
        rows += [
            {
                "id": f"{tag}-{i}",
                "instruction": r.instruction,
                "input": r.input,
                "output": r.output,
                "source": tag,
            }
            for i, r in enumerate(records)
        ]
    if not rows:
        raise DataError(f"no general source named in {source!r}")
    return rows, files


def _contrast(cfg: BuildConfig, pool: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Path]]:
    """The kept contrast rows, each matched back to its general row (whose ordinary answer it keeps)."""
    if not cfg.contrast:
        return [], []
    path = Path(cfg.contrast) / "contrast.jsonl"
    if not path.is_file():
        raise DataError(
            f"{cfg.contrast} has no contrast.jsonl; make it with `tbr contrast --out {cfg.contrast}`"
        )
    by_id = {g["id"]: g for g in pool}
    rows = []
    for r in read_jsonl(path):
        if not (r.get("kept") and (r.get("reflection") or "").strip()):
            continue
        g = by_id.get(r["id"])
        if g is None or g["instruction"] != r["instruction"]:
            raise DataError(
                f"{path}: row {r['id']} is not in this build's general pool {cfg.general_source!r}; "
                "run the contrast stage on the same general_source"
            )
        rows.append({**g, "reflection": r["reflection"], "word": r.get("word")})
    return rows, [path]


def _take(what: str, pool_size: int, n: int, source: str) -> int:
    if n == -1:
        return pool_size
    if n > pool_size:
        raise DataError(
            f"asked for {n} {what} samples but {source} has only {pool_size}; "
            f"use --{what}-n {pool_size} (or -1 for all)"
        )
    return n


# --------------------------------------------------------------------------- rows


def make_row(
    *,
    id: str,  # noqa: A002
    kind: str,
    instruction: str,
    input: str,  # noqa: A002
    answer: str,
    reflection: str | None,
    category: str | None,
    source: str,
    template: str,
    reflection_format: str,
) -> dict[str, Any]:
    target = join(reflection, answer, reflection_format) if reflection else answer
    if template == "alpaca":
        prompt: Any = alpaca_prompt(instruction, input)
        completion: Any = target
    else:
        user = f"{instruction}\n\n{input}" if input and input.strip() else instruction
        prompt = [{"role": "user", "content": user}]
        completion = [{"role": "assistant", "content": target}]
    return {
        "id": id,
        "kind": kind,
        "has_reflection": reflection is not None,
        "category": category,
        "source": source,
        "instruction": instruction,
        "input": input,
        "reflection": reflection,
        "answer": answer,
        "prompt": prompt,
        "completion": completion,
    }


def build(cfg: BuildConfig) -> Path:
    """Write DIR/train.jsonl and DIR/manifest.json; returns DIR."""
    from tbr.categories import seeded_order, stratified_sample

    cfg.validate()
    pool, safety_files, safety_info = _safety_pool(cfg)
    n_safety = _take("safety", len(pool), cfg.safety_n, cfg.reflections or cfg.safety_source)
    if n_safety == len(pool):
        safety = pool
    else:
        idx = stratified_sample(
            [r["id"] for r in pool], [r.get("category") for r in pool], n_safety, cfg.seed
        )
        safety = [pool[i] for i in idx]
    refusals = {r.get("refusal") for r in safety if r.get("refusal")}
    refusal = cfg.refusal or (refusals.pop() if len(refusals) == 1 else STANDARD_REFUSAL)
    with_refl = reflected_ids([r["id"] for r in safety], cfg.gamma, cfg.seed)

    general_pool, general_files = _general(cfg)
    n_general = _take("general", len(general_pool), cfg.general_n, cfg.general_source)
    # Contrast rows replace as many ordinary general rows (their own plain copies first), so the mix
    # size and the safety share stay those of the same build without them.
    contrast, contrast_files = _contrast(cfg, general_pool)
    skip = {c["id"] for c in contrast}
    general = [general_pool[i] for i in seeded_order([g["id"] for g in general_pool], cfg.seed, "general")]
    general = [g for g in general if g["id"] not in skip][: max(0, n_general - len(contrast))]

    common = {"template": cfg.template, "reflection_format": cfg.reflection_format}
    rows = [
        make_row(
            id=r["id"],
            kind="safety",
            instruction=r["instruction"],
            input=r.get("input", ""),
            answer=refusal,
            reflection=r["reflection"] if r["id"] in with_refl else None,
            category=r.get("category"),
            source=r.get("source", ""),
            **common,
        )
        for r in safety
    ]
    # General rows answer plainly; contrast rows put a benign reflection before the same kind of answer.
    rows += [
        make_row(
            id=g["id"],
            kind=kind,
            instruction=g["instruction"],
            input=g["input"],
            answer=g["output"],
            reflection=g["reflection"] if kind == "contrast" else None,
            category=None,
            source=g["source"],
            **common,
        )
        for kind, pool in (("general", general), ("contrast", contrast))
        for g in pool
    ]
    if not rows:
        raise DataError("nothing to build: both --safety-n and --general-n are 0")
    random.Random(cfg.seed).shuffle(rows)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "train.jsonl", rows)

    counts = {
        "total": len(rows),
        "general": len(general),
        "safety": len(safety),
        "safety_with_reflection": len(with_refl),
        "safety_plain_refusal": len(safety) - len(with_refl),
        "safety_per_category": dict(sorted(Counter(r.get("category") or "none" for r in safety).items())),
        "reflected_per_category": dict(
            sorted(Counter(r.get("category") or "none" for r in safety if r["id"] in with_refl).items())
        ),
    }
    if cfg.contrast:  # only then, so builds without contrast rows keep their manifests
        counts["contrast"] = len(contrast)
        counts["contrast_per_word"] = dict(sorted(Counter(c.get("word") or "none" for c in contrast).items()))
    write_manifest(
        out,
        "build",
        cfg,
        data_files=[*safety_files, *general_files, *contrast_files],
        extra={
            "counts": counts,
            "gamma": cfg.gamma,
            "template": cfg.template,
            "reflection_format": cfg.reflection_format,
            "refusal": refusal,
            "refusal_sha256": sha256_text(refusal),
            "reflected_ids_hash": stable_hash(sorted(with_refl)),
            "selection": "safety ranked by seeded hash of id; the first round(gamma*n) carry a reflection",
            "safety": safety_info,
            "train_sha256": sha256_text((out / "train.jsonl").read_text(encoding="utf-8")),
        },
    )
    log.info(
        "build: %d rows (%d general, %d safety, %d with reflection, %d contrast, gamma=%s) -> %s",
        len(rows),
        len(general),
        len(safety),
        len(with_refl),
        len(contrast),
        cfg.gamma,
        out / "train.jsonl",
    )
    return out


# --------------------------------------------------------------------------- showing


def _text(x: Any) -> str:
    return x if isinstance(x, str) else "\n".join(f"[{m['role']}] {m['content']}" for m in x)


def show(path: str | Path, n: int) -> str:
    """N samples of a train.jsonl, alternating reflected safety, plain safety and general rows."""
    rows = list(read_jsonl(Path(path)))
    groups = [
        [r for r in rows if r["kind"] == "safety" and r["has_reflection"]],
        [r for r in rows if r["kind"] == "safety" and not r["has_reflection"]],
        [r for r in rows if r["kind"] == "general"],
        [r for r in rows if r["kind"] == "contrast"],
    ]
    picked: list[dict[str, Any]] = []
    while len(picked) < min(n, len(rows)):
        for g in groups:
            if g and len(picked) < n:
                picked.append(g.pop(0))
    parts = []
    for r in picked:
        label = (
            r["kind"]
            + (" + reflection" if r["has_reflection"] else "")
            + (f" [{r['category']}]" if r["category"] else "")
        )
        parts.append(
            f"===== {r['id']} ({label})\n--- prompt\n{_text(r['prompt'])}\n--- completion\n"
            f"{_text(r['completion'])}"
        )
    return "\n\n".join(parts)


def run(cfg: BuildConfig) -> int:
    out = build(cfg)
    m = json.loads((out / "manifest.json").read_text())
    print(f"{out / 'train.jsonl'}: {json.dumps(m['counts'])}")
    if cfg.show:
        print(show(out / "train.jsonl", cfg.show))
    return 0
