"""Safety prompts for reflections and training: one source (built-in, a data-dir set or an Alpaca-format
file), de-duplicated and sorted into harm categories (tbr.categories). `tbr reflect` samples from it;
`tbr build` reads the same prompts for the safety half of a training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.errors import DataError
from tbr.io import stable_hash

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Built-in, self-written data for the offline demo (no data dir needed).
BUILTIN_SOURCES = {"demo": ASSETS / "demo_general.jsonl", "demo-safety": ASSETS / "demo_safety.jsonl"}


@dataclass
class SafetyPrompt:
    id: str
    instruction: str
    input: str
    category: str | None
    category_method: str
    source: str
    category_reason: str | None = None  # why the prompt is `other` (tbr.categories), else None


def load_safety(
    source: str,
    data_dir: str | None,
    categorizer: str = "keyword",
    backend: Any = None,
    cache_path: Path | None = None,
) -> tuple[list[SafetyPrompt], dict[str, Any], list[Path]]:
    """Every safety prompt of `source`, de-duplicated and categorised; (prompts, report, files read)."""
    from tbr.categories import KEYWORDS_ASSET, categorize
    from tbr.data import data_files, load_instructions_with_report

    src: str | Path = BUILTIN_SOURCES.get(source, source)
    records, load_report = load_instructions_with_report(src, data_dir)
    files = [Path(src)] if isinstance(src, Path) else data_files(src, data_dir)
    files.append(KEYWORDS_ASSET)  # its hash lands in the manifest's data hashes
    seen: set[str] = set()
    uniq = []
    for r in records:
        key = " ".join((r.instruction + " " + r.input).lower().split())
        if key not in seen:
            seen.add(key)
            uniq.append(r)
    if not uniq:
        raise DataError(f"safety source {source!r} has no instructions")
    texts = [(r.instruction + "\n" + r.input).strip() for r in uniq]
    cats, how, cat_report = categorize(
        texts, categorizer, given=[r.category for r in uniq], backend=backend, cache_path=cache_path
    )
    name = Path(source).stem if str(source).endswith((".json", ".jsonl")) else source
    prompts = [
        SafetyPrompt(
            f"{name}-{stable_hash([r.instruction, r.input], 12)}", r.instruction, r.input, c, h, name, why
        )
        for r, c, h, why in zip(uniq, cats, how, cat_report.reasons, strict=True)
    ]
    report = {
        "load": load_report.to_dict(),
        "duplicates_dropped": len(records) - len(uniq),
        "categories": cat_report.to_dict(),
    }
    return prompts, report, files
