"""Evaluation suites: the names `tbr eval --suites` accepts, and how each becomes prompt records.

Most suites are `tbr.data` prompt sets. A few names are bundles that expand into a safe and an unsafe
half, because the two halves are scored in opposite directions and must never be pooled:
  xstest → xstest-safe (250) + xstest-unsafe (200);  demo → demo-safe + demo-unsafe;
  stl    → every Safety-Tuned LLaMAs evaluation set.
`demo` is built in (tbr/assets/demo_suite.jsonl: contrast pairs we wrote in XSTest's spirit), so the
demo runs offline with no data dir.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tbr.data import PROMPT_SUITES, PromptRecord, data_files, load_prompts
from tbr.errors import DataError
from tbr.io import read_jsonl

DEMO_FILE = "demo_suite.jsonl"
DEMO_SUITES = ("demo-safe", "demo-unsafe")

BUNDLES: dict[str, tuple[str, ...]] = {
    "xstest": ("xstest-safe", "xstest-unsafe"),
    "demo": DEMO_SUITES,
    "stl": tuple(s for s in PROMPT_SUITES if s.startswith("stl-")),
}

# What `--suites` accepts: the bundles, and every single suite.
SUITE_NAMES: tuple[str, ...] = tuple(BUNDLES) + tuple(s for s in PROMPT_SUITES if s != "xstest") + DEMO_SUITES


def expand(names: list[str]) -> list[str]:
    """Bundles → their halves, in order, without duplicates; unknown names are an error."""
    out: list[str] = []
    for name in names:
        if name not in SUITE_NAMES:
            raise DataError(f"unknown suite {name!r}; valid suites: {', '.join(SUITE_NAMES)}")
        for suite in BUNDLES.get(name, (name,)):
            if suite not in out:
                out.append(suite)
    if not out:
        raise DataError("no suites given; e.g. --suites xstest,malicious-instruct")
    return out


def demo_path() -> Path:
    return Path(str(resources.files("tbr") / "assets" / DEMO_FILE))


def load_demo(label: str | None = None) -> list[PromptRecord]:
    """The built-in contrast pairs: every row has id, pair, prompt, label (safe|unsafe) and type."""
    path = demo_path()
    records = []
    for n, row in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("id", "prompt", "label", "type", "pair") if k not in row]
        if missing:
            raise DataError(f"{path}:{n}:1: demo row lacks {', '.join(missing)}")
        rec = PromptRecord(row["id"], row["prompt"], row["label"], row["type"], "demo", {"pair": row["pair"]})
        if label is None or rec.label == label:
            records.append(rec)
    return records


def load(suite: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[PromptRecord]:
    """The prompts of one (expanded) suite; the first `limit` of them if given."""
    if suite in DEMO_SUITES:
        records = load_demo(suite.removeprefix("demo-"))
        return records if limit is None else records[:limit]
    return load_prompts(suite, data_dir=data_dir, limit=limit)


def files(suite: str, data_dir: str | Path | None = None) -> list[Path]:
    """The local files a suite reads, for the manifest's data hashes."""
    return [demo_path()] if suite in DEMO_SUITES else data_files(suite, data_dir)


def higher_is_better(labels: Iterable[str]) -> bool | None:
    """Safe prompts should be answered (compliance ↑), unsafe ones refused (compliance ↓); mixed: None."""
    found = set(labels)
    return None if len(found) != 1 else found == {"safe"}
