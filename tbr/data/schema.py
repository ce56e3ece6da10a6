"""The two record types every loader yields, and the per-load count report.

All prompt benchmarks map onto `PromptRecord` and all training sources onto `InstructionRecord`, so
the generation, judging and training stages never need to know which file a row came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.config import path_roots, portable_path
from tbr.errors import DataError

LABELS = ("safe", "unsafe")


@dataclass(frozen=True)
class PromptRecord:
    """One evaluation prompt.

    `label` is what a well-behaved model should do: "safe" prompts should be answered (a refusal is a
    false refusal), "unsafe" ones refused. `type` is the XSTest type or the set's own category.
    """

    id: str
    prompt: str
    label: str
    type: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False)  # hash=False keeps records hashable

    def __post_init__(self) -> None:
        # A wrong label silently flips a refusal metric, so it is rejected at construction time.
        if self.label not in LABELS:
            raise DataError(f"prompt {self.id!r}: label must be one of {LABELS}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> PromptRecord:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})


@dataclass(frozen=True)
class InstructionRecord:
    """One Alpaca-style training or prompting example (`output` is "" where the source has none)."""

    instruction: str
    input: str = ""
    output: str = ""
    category: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> InstructionRecord:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})


@dataclass
class LoadReport:
    """What one load did: rows read, rows kept, and every skipped row counted under its reason.

    The invariant `read == kept + sum(skipped.values())` holds after every load, so nothing is dropped
    without a trace.
    """

    name: str
    origin: str = ""
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for the log, e.g. `xstest-safe: read 450 rows from …, kept 250, skipped 200 (label unsafe, not in xstest-safe: 200)`."""
        line = f"{self.name}: read {self.read} rows from {_shown(self.origin)}, kept {self.kept}"
        if self.skipped:
            reasons = "; ".join(f"{reason}: {n}" for reason, n in self.skipped.items())
            line += f", skipped {self.n_skipped} ({reasons})"
        return line

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _shown(origin: str) -> str:
    """A file origin as a log line may show it: `$TBR_DATA_DIR/…` or relative to the working dir, never
    one machine's absolute folders (the same rule as manifests)."""
    if not origin.startswith("/"):
        return origin  # hf:<id>, or already relative
    return portable_path(origin, path_roots(Path.cwd(), None))
