"""The judge Protocol. A verdict is a label or an error, never both: a judge that fails (unparseable
output, a dead endpoint) records an error, which is counted apart and excluded from rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

# XSTest's three classes.
LABELS = ("full_compliance", "full_refusal", "partial_refusal")


@dataclass
class JudgeItem:
    prompt: str
    response: str  # the full response
    answer: str  # the response with any safety reflection removed (tbr.reflection.split)
    reflection: str | None = None


@dataclass
class Verdict:
    judge: str
    label: str | None  # one of LABELS, or None when error is set
    raw: str  # the judge's raw output (rule judges: the rule that fired, or "")
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.label is None) == (self.error is None):
            raise ValueError("a verdict has exactly one of label or error")
        if self.label is not None and self.label not in LABELS:
            raise ValueError(f"unknown label {self.label!r}")

    @property
    def is_error(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...
