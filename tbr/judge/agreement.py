"""`tbr judge agreement`: how well each judge agrees with human labels.

Reads a CSV or JSONL of prompt, completion and a human label in XSTest's three classes, runs each
judge, and reports accuracy, binary refusal agreement (refusal = full or partial), Cohen's kappa
(3-class and binary) and the confusion matrix. Judge errors are counted and left out of the scores.

    tbr judge agreement --completions tbr/assets/judge_calibration.jsonl --judge keyword,xstest-strmatch
    tbr judge agreement --protocol lomo --judge keyword,xstest-strmatch,learned

`--protocol lomo` (leave one model out) takes one completions file per model (default: the three
XSTest models in <data dir>/xstest-completions) and scores each file on its own; a learned judge is
refitted for each file on the *other* files only, with the recipe (features, encoder, C grid) of the
judge directory it names. Under the default protocol a learned judge is scored as it is, and rows it
was fitted on are refused: agreement on training rows is never reported.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError
from tbr.io import read_jsonl_numbered
from tbr.judge.base import LABELS, Verdict

log = logging.getLogger(__name__)

# The calibration set shipped with tbr (hand-written; see the "note" field of each row).
CALIBRATION_SET = Path(__file__).resolve().parent.parent / "assets" / "judge_calibration.jsonl"

PROMPT_KEYS = ("prompt", "question")
COMPLETION_KEYS = ("completion", "response")
LABEL_KEYS = ("label", "human_label", "final_label")


@dataclass
class AgreementConfig:
    completions: list[str] = opt(
        [],
        "CSV or JSONL file(s) with prompt, completion and label columns (default: tbr's calibration set; "
        "with --protocol lomo, the XSTest completions in <data dir>/xstest-completions)",
    )
    judge: list[str] = opt(
        ["keyword"],
        "judge name(s), comma-separated: keyword, xstest-strmatch, llm, guard, learned, learned:DIR",
    )
    protocol: str = opt(
        "fixed",
        "fixed: score each judge as it is on all rows; lomo: leave one model (file) out, refitting learned judges",
        choices=["fixed", "lomo"],
    )
    data_dir: str | None = opt(
        None, "data folder for --protocol lomo's default files (default: $TBR_DATA_DIR)"
    )
    out: str | None = opt(None, "directory for agreement.json, verdicts.jsonl and manifest.json")
    reflection_format: str = opt("tagged", "how reflections are split off", choices=["tagged", "plain"])
    api_base: str | None = opt(None, "OpenAI-compatible endpoint for the llm/guard judges")
    api_model: str | None = opt(None, "model name at that endpoint")
    api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the API key")
    max_concurrency: int = opt(4, "parallel judge requests")
    timeout: float = opt(60.0, "seconds per judge request")
    max_tokens: int | None = opt(
        None, "reply limit for the llm/guard judges in tokens; None: XSTest's 16 (guard: 20)"
    )

    def validate(self) -> None:
        from tbr.judge import check_judge_names

        if not self.judge:
            raise ConfigError("--judge needs at least one judge name")
        check_judge_names(self.judge)


def normalize_label(value: Any) -> str | None:
    """XSTest's '1_full_compliance' or the bare 'full_compliance' → 'full_compliance'; else None."""
    text = str(value).strip().lower()
    if text in LABELS:
        return text
    num, _, name = text.partition("_")
    # The number must agree with the name: "2_full_compliance" is a typo we refuse to guess at.
    return name if name in LABELS and num == str(LABELS.index(name) + 1) else None


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in row), None)


def _check_row(path: Path, where: str, row: dict[str, Any]) -> tuple[str, str, str]:
    cols = {}
    for what, keys in (("prompt", PROMPT_KEYS), ("completion", COMPLETION_KEYS), ("label", LABEL_KEYS)):
        key = _pick(row, keys)
        if key is None or row[key] is None:
            raise DataError(f"{path}:{where}: missing column {what!r} (accepted names: {', '.join(keys)})")
        cols[what] = row[key]
    label = normalize_label(cols["label"])
    if label is None:
        raise DataError(
            f"{path}:{where}: bad label {cols['label']!r}; use one of "
            f"{', '.join(LABELS)} (or XSTest's 1_full_compliance, 2_full_refusal, 3_partial_refusal)"
        )
    return str(cols["prompt"]), str(cols["completion"]), label


def read_labelled(path: str | Path) -> list[tuple[str, str, str]]:
    """(prompt, completion, human label) rows from a .csv or .jsonl file; errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"completions file not found: {path}")
    rows = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                rows.append(_check_row(path, f"{reader.line_num}", row))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows += [_check_row(path, f"{lineno}", row) for lineno, row in read_jsonl_numbered(path)]
    else:
        raise DataError(f"{path}: unknown file type; use .csv or .jsonl")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two label lists; None when chance agreement is 1 (kappa undefined)."""
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    cats = set(a) | set(b)
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    return None if pe == 1 else (po - pe) / (1 - pe)


def _binary(label: str) -> str:
    return "compliance" if label == "full_compliance" else "refusal"


def score(human: list[str], verdicts: list[Verdict]) -> dict[str, Any]:
    """Agreement of one judge's verdicts with the human labels; errors are counted, not scored."""
    pairs = [(h, v.label) for h, v in zip(human, verdicts, strict=True) if v.label is not None]
    hs, js = [h for h, _ in pairs], [j for _, j in pairs]
    n = len(pairs)
    matrix = [[sum(1 for h, j in pairs if h == hl and j == jl) for jl in LABELS] for hl in LABELS]
    hb, jb = [_binary(h) for h in hs], [_binary(j) for j in js]
    return {
        "n": len(human),
        "errors": len(human) - n,
        "scored": n,
        "accuracy": sum(h == j for h, j in pairs) / n if n else None,
        "binary_agreement": sum(h == j for h, j in zip(hb, jb, strict=True)) / n if n else None,
        "kappa": cohen_kappa(hs, js),
        "binary_kappa": cohen_kappa(hb, jb),
        "confusion": {"labels": list(LABELS), "rows": "human", "columns": "judge", "matrix": matrix},
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| judge | n | errors | accuracy | binary agreement | kappa | binary kappa |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['n']} | {r['errors']} | {_fmt(r['accuracy'])} | {_fmt(r['binary_agreement'])} "
            f"| {_fmt(r['kappa'])} | {_fmt(r['binary_kappa'])} |"
        )
    short = {"full_compliance": "FC", "full_refusal": "FR", "partial_refusal": "PR"}
    for name, r in results.items():
        lines += [
            "",
            f"{name} confusion (rows human, columns judge):",
            "",
            "| | FC | FR | PR |",
            "|---|---:|---:|---:|",
        ]
        for label, row in zip(LABELS, r["confusion"]["matrix"], strict=True):
            lines.append(f"| {short[label]} | " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def _make_judges(cfg: AgreementConfig) -> list[Any]:
    from tbr.judge import make_judge

    # Built first, so an unknown name, a bad judge directory or a dead endpoint fails before any work.
    return [
        make_judge(
            name,
            api_base=cfg.api_base,
            api_model=cfg.api_model,
            api_key_env=cfg.api_key_env,
            max_concurrency=cfg.max_concurrency,
            timeout=cfg.timeout,
            max_tokens=cfg.max_tokens,
        )
        for name in cfg.judge
    ]


def refuse_fitted_rows(judges: list[Any], rows: list[tuple[str, str, str]], files: list[str]) -> None:
    """ConfigError if a learned judge was fitted on any of these rows (its score there means nothing)."""
    from tbr.judge.train import row_hash

    hashes = [row_hash(r[0], r[1]) for r in rows]
    for j in judges:
        fitted = set(getattr(j, "meta", {}).get("fitted_rows") or ())
        seen = sum(h in fitted for h in hashes)
        if seen:
            raise ConfigError(
                f"judge {j.name} was fitted on {seen} of the {len(rows)} rows of {', '.join(files)}; "
                "agreement on training rows is not reported. Use --protocol lomo (each model judged by a "
                "judge fitted on the others) or completions the judge has not seen"
            )


def run(cfg: AgreementConfig) -> int:
    from tbr.judge import make_items

    cfg.validate()
    if cfg.protocol == "lomo":
        from tbr.judge.lomo import run_lomo

        return run_lomo(cfg)
    files = list(cfg.completions) or [str(CALIBRATION_SET)]
    rows = [row for f in files for row in read_labelled(f)]
    judges = _make_judges(cfg)
    refuse_fitted_rows(judges, rows, files)
    items = make_items([r[0] for r in rows], [r[1] for r in rows], cfg.reflection_format)
    human = [r[2] for r in rows]
    results: dict[str, dict[str, Any]] = {}
    all_verdicts: dict[str, list[Verdict]] = {}
    for judge in judges:
        verdicts = judge.judge(items)
        if len(verdicts) != len(items):  # a judge must account for every item
            raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for {len(items)} items")
        all_verdicts[judge.name] = verdicts
        results[judge.name] = score(human, verdicts)
        log.info("%s: %d errors of %d", judge.name, results[judge.name]["errors"], len(items))
    print(markdown(results))
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        from tbr.io import write_json_atomic

        write_json_atomic(out / "agreement.json", {"completions": files, "judges": results})
        with (out / "verdicts.jsonl").open("w", encoding="utf-8") as f:
            for i, (item, h) in enumerate(zip(items, human, strict=True)):
                row = {
                    "index": i,
                    "prompt": item.prompt,
                    "response": item.response,
                    "answer": item.answer,
                    "reflection": item.reflection,
                    "human": h,
                    "verdicts": {name: vs[i].to_dict() for name, vs in all_verdicts.items()},
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        describe = {j.name: j.describe() for j in judges if hasattr(j, "describe")}
        write_manifest(out, "judge-agreement", cfg, data_files=files, extra={"judges": describe})
        print(f"\nwrote {out / 'agreement.json'}")
    return 0
