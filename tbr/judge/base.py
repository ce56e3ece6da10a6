"""The judge Protocol. A verdict is a label or an error, never both: a judge that fails (unparseable
output, a dead endpoint) records an error, which is counted apart and excluded from rates.

Every judge describes itself (`describe()`: what the manifest records) and names its identity
(`identity()`: a hash of everything that can change a verdict: its rules, strings, prompt, endpoint,
model, reply limit). Cached verdicts are keyed by that identity, so a judge with other rules or
another prompt never reuses a verdict of a different judge that happens to share its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from tbr.io import stable_hash

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

    def describe(self) -> dict[str, Any]:
        """JSON-able settings for the manifest: everything that can change a verdict, no secrets."""
        ...

    def identity(self) -> str:
        """A stable hash of describe() (use `identity_of`); the verdict cache key."""
        ...


def identity_of(description: dict[str, Any]) -> str:
    """The identity of a judge that describes itself so: a hash of its whole description."""
    return stable_hash({"judge": description}, length=32)
