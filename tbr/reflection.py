"""How a safety reflection and the answer are joined in training targets, and split again at evaluation.

The paper uses no delimiter (its "[Reflection]"/"[Answer]" are figure annotations), which makes it
impossible to strip the reflection before rule-based judging: XSTest's prefix matcher would call every
reflected refusal "compliance". So the default is `tagged`, with one closing delimiter that also
serves as lm-eval's `think_end_token`. `plain` is the paper-like form; its split is a documented
heuristic (first paragraph, only when it opens like a reflection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFLECTION_FORMATS = ("tagged", "plain")
OPEN_TAG = "<reflection>"
CLOSE_TAG = "</reflection>"

# Openers of the paper's reflections ("This query asks for …", "The query is asking …"); used only by
# the `plain` split, and recorded in manifests so a reader knows the rule.
PLAIN_OPENERS = (
    "this query",
    "the query",
    "this request",
    "the request",
    "this question",
    "the question",
    "this instruction",
    "the instruction",
    "this prompt",
    "the prompt",
)


def join(reflection: str, answer: str, fmt: str = "tagged") -> str:
    """The training target for a safety sample: reflection first, then the answer (paper Figs. 1, 2, 9)."""
    reflection = " ".join(reflection.split())  # one paragraph: the plain split relies on it
    if fmt == "tagged":
        return f"{OPEN_TAG}{reflection}{CLOSE_TAG}\n{answer}"
    if fmt == "plain":
        return f"{reflection}\n\n{answer}"
    raise ValueError(f"unknown reflection format {fmt!r}; use one of {', '.join(REFLECTION_FORMATS)}")


@dataclass
class Split:
    reflection: str | None  # None when the response carries no reflection
    answer: str
    method: str  # "tagged", "plain-heuristic" or "none"


def split(response: str, fmt: str = "tagged") -> Split:
    """Separate a model response into (reflection, answer). Never fails: no reflection → whole text."""
    text = response.strip()
    # The closing tag alone is enough: a model may drop or garble the opening tag, and everything before
    # the close is reflection by construction.
    if CLOSE_TAG in text:
        head, _, tail = text.partition(CLOSE_TAG)
        return Split(head.replace(OPEN_TAG, "").strip(), tail.strip(), "tagged")
    if text.startswith(OPEN_TAG):  # opened but never closed (truncated): all of it is reflection
        return Split(text[len(OPEN_TAG) :].strip(), "", "tagged")
    if fmt == "plain":
        first, sep, rest = text.partition("\n\n")
        if sep and first.lower().startswith(PLAIN_OPENERS):
            return Split(first.strip(), rest.strip(), "plain-heuristic")
    return Split(None, text, "none")


_TAG_RE = re.compile(re.escape(OPEN_TAG) + "|" + re.escape(CLOSE_TAG))


def strip_tags(text: str) -> str:
    return _TAG_RE.sub("", text)
