"""Evaluation suites: the names `tbr eval --suites` accepts, and how each becomes prompt records.

Most suites are `tbr.data` prompt sets. A few names are bundles that expand into a safe and an unsafe
half, because the two halves are scored in opposite directions and must never be pooled:
  xstest → xstest-safe (250) + xstest-unsafe (200);  demo → demo-safe + demo-unsafe;
  stl    → every Safety-Tuned LLaMAs evaluation set.
`demo` is built in (tbr/assets/demo_suite.jsonl: contrast pairs we wrote in XSTest's spirit), so the
demo runs offline with no data dir.

User suites. Any `.csv` or `.jsonl` path is a suite too (`--suites xstest,my/phtest.csv`): columns
`prompt` and `label` (safe|unsafe), optionally `id` and `type`. It is named after the file (`phtest`)
and, like a bundle, split by label into `phtest-safe` / `phtest-unsafe` (only the halves it has).
Its hash goes into the manifest (`files`) and into `tbr run` stage keys (`input_hashes`).

Samples. `limit` keeps the first N prompts (quick checks); `sample` draws N at random with a seed
fixed per suite, spread over the whole file (XSTest and OR-Bench are ordered by type or shuffled, so
the first N are not a fair subset of every file). The sample keeps file order.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tbr.data import PROMPT_SUITES, LoadReport, PromptRecord, data_files, load_prompts
from tbr.data.readers import check_unique, read_csv, read_jsonl_rows
from tbr.data.schema import LABELS
from tbr.errors import DataError
from tbr.io import read_jsonl, sha256_file

DEMO_FILE = "demo_suite.jsonl"
DEMO_SUITES = ("demo-safe", "demo-unsafe")
USER_SUFFIXES = (".csv", ".jsonl")
USER_SEP = "::"  # an expanded user suite is "<path>::<label>"

BUNDLES: dict[str, tuple[str, ...]] = {
    "xstest": ("xstest-safe", "xstest-unsafe"),
    "demo": DEMO_SUITES,
    "stl": tuple(s for s in PROMPT_SUITES if s.startswith("stl-")),
}

# What `--suites` accepts: the bundles, and every single suite (plus any .csv/.jsonl path).
SUITE_NAMES: tuple[str, ...] = tuple(BUNDLES) + tuple(s for s in PROMPT_SUITES if s != "xstest") + DEMO_SUITES


def is_user_file(name: str) -> bool:
    return str(name).lower().endswith(USER_SUFFIXES)


def _user_parts(suite: str) -> tuple[Path, str | None]:
    path, sep, label = str(suite).rpartition(USER_SEP)
    return (Path(path), label) if sep else (Path(suite), None)


def display_name(suite: str) -> str:
    """What results call a suite: the name itself, or `<file stem>-<label>` for a user file."""
    if USER_SEP not in str(suite):
        return str(suite)
    path, label = _user_parts(suite)
    return f"{path.stem}-{label}"


def load_user(path: str | Path) -> list[PromptRecord]:
    """Every row of a user's CSV/JSONL suite; a bad row is an error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"suite file {path} does not exist (a .csv/.jsonl suite must be a readable file)")
    report = LoadReport(path.stem)
    rows = read_csv(path, ("prompt", "label"), report) if path.suffix.lower() == ".csv" else None
    if rows is None:
        rows = read_jsonl_rows(path, report)
    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for row in rows:
        prompt = row.text("prompt")
        label = row.text("label").strip().lower()
        if label not in LABELS:
            raise DataError(f"{row.where}: label must be one of {', '.join(LABELS)}, got {label!r}")
        rid = row.text("id", required=False).strip() or f"{path.stem}-{row.index}"
        check_unique(seen, rid, row)
        records.append(PromptRecord(rid, prompt, label, row.text("type", required=False), path.stem))
    if not records:
        raise DataError(f"{path}: no prompts (expected rows with `prompt` and `label` columns)")
    return records


def expand(names: list[str]) -> list[str]:
    """Bundles and user files → their halves, in order, without duplicates; unknown names are an error."""
    out: list[str] = []
    for name in names:
        if is_user_file(name):
            # Read now: a malformed file fails before any model loads, and only present halves appear.
            labels = {r.label for r in load_user(name)}
            halves = tuple(f"{name}{USER_SEP}{lab}" for lab in LABELS if lab in labels)
        elif name in SUITE_NAMES:
            halves = BUNDLES.get(name, (name,))
        else:
            raise DataError(
                f"unknown suite {name!r}; valid suites: {', '.join(SUITE_NAMES)}, or a .csv/.jsonl file "
                "with prompt and label columns"
            )
        for suite in halves:
            if suite not in out:
                out.append(suite)
    if not out:
        raise DataError("no suites given; e.g. --suites xstest,malicious-instruct")
    names_seen: dict[str, str] = {}
    for suite in out:  # two user files with one stem would merge their results under one name
        shown = display_name(suite)
        if names_seen.setdefault(shown, suite) != suite:
            raise DataError(f"suites {names_seen[shown]!r} and {suite!r} would both be reported as {shown!r}")
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


def sample_records(records: list[PromptRecord], n: int, seed: int, suite: str) -> list[PromptRecord]:
    """A seeded random n of `records`, in their file order; the seed is fixed per (seed, suite)."""
    if n >= len(records):
        return records
    keep = set(random.Random(f"{seed}/{display_name(suite)}").sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]


def load(
    suite: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    *,
    sample: int | None = None,
    seed: int = 0,
) -> list[PromptRecord]:
    """The prompts of one (expanded) suite: a seeded `sample` of them, then the first `limit`."""
    if suite in DEMO_SUITES:
        records = load_demo(suite.removeprefix("demo-"))
    elif USER_SEP in suite:
        path, label = _user_parts(suite)
        records = [r for r in load_user(path) if r.label == label]
    else:
        records = load_prompts(suite, data_dir=data_dir)
    if sample is not None:
        records = sample_records(records, sample, seed, suite)
    return records if limit is None else records[:limit]


def files(suite: str, data_dir: str | Path | None = None) -> list[Path]:
    """The local files a suite reads, for the manifest's data hashes."""
    if suite in DEMO_SUITES:
        return [demo_path()]
    if USER_SEP in suite or is_user_file(suite):
        return [_user_parts(suite)[0]]
    return data_files(suite, data_dir)


def file_hashes(names: Iterable[str]) -> dict[str, str]:
    """sha256 of each user suite file among `names` (for stage keys): an edited file is a new input."""
    return {str(n): sha256_file(n) for n in names if is_user_file(n) and Path(n).is_file()}


def higher_is_better(labels: Iterable[str]) -> bool | None:
    """Safe prompts should be answered (compliance ↑), unsafe ones refused (compliance ↓); mixed: None."""
    found = set(labels)
    return None if len(found) != 1 else found == {"safe"}
