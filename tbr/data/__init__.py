"""Benchmark and training-data loaders: one registry, two record types, counted and located errors.

Where data comes from, in order: an explicit `data_dir` (the CLI's `--data-dir`), else the
`TBR_DATA_DIR` environment variable, else the public Hugging Face dataset named in each loader.
A data dir is laid out like the project's shared data folder (`xstest/xstest_prompts.csv`, ...).
With a data dir, a missing file is an error: we never mix local and Hub copies behind the user's back.

    records = load_prompts("xstest-safe", data_dir=os.environ["TBR_DATA_DIR"], limit=10)
    records, report = load_prompts_with_report("harmbench")
    print(report.summary())
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

from tbr.errors import ConfigError, DataError

from . import harmful, instructions, orbench, stl, xstest
from .schema import InstructionRecord, LoadReport, PromptRecord

__all__ = [
    "INSTRUCTION_SOURCES",
    "PROMPT_SUITES",
    "InstructionRecord",
    "LoadReport",
    "PromptRecord",
    "data_files",
    "load_instructions",
    "load_instructions_with_report",
    "load_prompts",
    "load_prompts_with_report",
    "resolve_data_dir",
]

log = logging.getLogger(__name__)

R = TypeVar("R", PromptRecord, InstructionRecord)


class _Entry(NamedTuple):
    load: Callable[[str, Path | None, LoadReport], list]  # (name, data dir or None for the Hub, report)
    files: tuple[str, ...]  # paths relative to the data dir, for manifest hashing


_PROMPTS: dict[str, _Entry] = {
    "xstest": _Entry(xstest.load, (xstest.FILE,)),
    "xstest-safe": _Entry(partial(xstest.load, labels=("safe",)), (xstest.FILE,)),
    "xstest-unsafe": _Entry(partial(xstest.load, labels=("unsafe",)), (xstest.FILE,)),
    **{suite: _Entry(orbench.load, (spec[0],)) for suite, spec in orbench.SETS.items()},
    "malicious-instruct": _Entry(harmful.load_malicious_instruct, (harmful.MALICIOUS_INSTRUCT,)),
    "advbench": _Entry(harmful.load_advbench, (harmful.ADVBENCH,)),
    "harmbench": _Entry(harmful.load_harmbench, (harmful.HARMBENCH,)),
    "strongreject": _Entry(harmful.load_strongreject, (harmful.STRONGREJECT,)),
    "jailbreakbench": _Entry(harmful.load_jailbreakbench, (harmful.JAILBREAKBENCH,)),
    **{suite: _Entry(stl.load_eval, (f"{stl.EVAL_DIR}/{spec[0]}",)) for suite, spec in stl.EVAL_SETS.items()},
}

_INSTRUCTIONS: dict[str, _Entry] = {
    "stl-safety": _Entry(stl.load_safety, (stl.TRAINING,)),
    "hh-rlhf": _Entry(instructions.load_hh_rlhf, (instructions.HH_RLHF,)),
    "alpaca-demo": _Entry(instructions.load_alpaca_named, (instructions.ALPACA_DEMO,)),
    "alpaca-tiny": _Entry(instructions.load_alpaca_named, (instructions.ALPACA_TINY,)),
    "alpaca": _Entry(instructions.load_alpaca_named, (instructions.ALPACA_FULL,)),
}

PROMPT_SUITES: tuple[str, ...] = tuple(_PROMPTS)
INSTRUCTION_SOURCES: tuple[str, ...] = tuple(_INSTRUCTIONS)


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The explicit dir, else `TBR_DATA_DIR`, else None (meaning: use the Hugging Face Hub).

    A dir that is named but missing is an error rather than a silent fall-back to the Hub.
    """
    origin = "--data-dir"
    if data_dir is None or str(data_dir) == "":
        data_dir, origin = os.environ.get("TBR_DATA_DIR", "").strip(), "TBR_DATA_DIR"
        if not data_dir:
            return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"data dir {path} (from {origin}) does not exist or is not a directory")
    return path


def _is_path(source: str | Path) -> bool:
    return isinstance(source, Path) or str(source).endswith((".json", ".jsonl"))


def data_files(suite: str | Path, data_dir: str | Path | None = None) -> list[Path]:
    """The local files a prompt suite or instruction source reads ([] when it comes from the Hub)."""
    if _is_path(suite):
        return [Path(suite)]
    entry = _PROMPTS.get(str(suite)) or _INSTRUCTIONS.get(str(suite))
    if entry is None:
        raise DataError(
            f"unknown suite {suite!r}; valid names: {', '.join(PROMPT_SUITES + INSTRUCTION_SOURCES)}"
        )
    root = resolve_data_dir(data_dir)
    return [] if root is None else [root / rel for rel in entry.files]


def _finish(records: list[R], report: LoadReport, limit: int | None) -> list[R]:
    if limit is not None:
        report.skip(f"beyond limit={limit}", max(0, len(records) - limit))
        records = records[:limit]
    report.kept = len(records)
    # A mismatch would mean some loader dropped rows without saying why: a bug, not bad data.
    if report.read != report.kept + report.n_skipped:
        raise RuntimeError(f"tbr.data bug: unaccounted rows in {report.summary()} (read {report.read})")
    log.info(report.summary())
    return records


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")


def load_prompts_with_report(
    suite: str, data_dir: str | Path | None = None, limit: int | None = None
) -> tuple[list[PromptRecord], LoadReport]:
    """Like `load_prompts`, also returning the LoadReport with read / kept / skipped counts."""
    entry = _PROMPTS.get(suite)
    if entry is None:
        raise DataError(f"unknown prompt suite {suite!r}; valid suites: {', '.join(PROMPT_SUITES)}")
    _check_limit(limit)
    report = LoadReport(suite)
    records = entry.load(suite, resolve_data_dir(data_dir), report)
    return _finish(records, report, limit), report


def load_prompts(
    suite: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[PromptRecord]:
    """The prompts of `suite` (one of PROMPT_SUITES), in file order; the first `limit` if given."""
    return load_prompts_with_report(suite, data_dir, limit)[0]


def load_instructions_with_report(
    source: str | Path, data_dir: str | Path | None = None, limit: int | None = None
) -> tuple[list[InstructionRecord], LoadReport]:
    """Like `load_instructions`, also returning the LoadReport."""
    _check_limit(limit)
    if str(source) in _INSTRUCTIONS:
        report = LoadReport(str(source))
        records = _INSTRUCTIONS[str(source)].load(str(source), resolve_data_dir(data_dir), report)
    elif _is_path(source):
        # Any Alpaca-format file; a relative path is relative to the working dir, not the data dir.
        path = Path(source).expanduser()
        report = LoadReport(path.stem)
        records = instructions.read_alpaca(path, path.stem, report)
    else:
        raise DataError(
            f"unknown instruction source {str(source)!r}; valid sources: {', '.join(INSTRUCTION_SOURCES)}, "
            "or a path to an Alpaca-format .json / .jsonl file"
        )
    return _finish(records, report, limit), report


def load_instructions(
    source: str | Path, data_dir: str | Path | None = None, limit: int | None = None
) -> list[InstructionRecord]:
    """Instruction records from a named source (INSTRUCTION_SOURCES) or an Alpaca-format .json/.jsonl path.

    `source` of the records is the name, or the file's stem for a path.
    """
    return load_instructions_with_report(source, data_dir, limit)[0]
