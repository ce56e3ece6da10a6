"""How a safety reflection and the answer are joined in training targets, and split again at evaluation.

Three formats:
  prose   the paper's target (Fig. 9's "revised output"): untagged prose, the reflection, then the
          refusal introduced by a connector, "…safely and legally. Therefore, I'm sorry, but I cannot
          fulfill that request…". The split finds the first sentence that starts with the connector
          ("Therefore,"): what comes before it is the reflection, the rest (connector dropped, first
          letter restored) is the answer. No tag, so nothing tag-shaped can act as a refusal switch.
  tagged  `<reflection>…</reflection>\n` + answer: one closing delimiter that also serves as lm-eval's
          `think_end_token`. Not the paper's; a trained tag can become a learned refusal switch
          (docs/results.md).
  plain   reflection + blank line + answer; the split is a heuristic (first paragraph, only when it
          opens like a reflection). Not the paper's either: the paper joins with a connector, not a
          paragraph break.
Every split also honours a closing tag, so a tagged model is split right whatever format is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFLECTION_FORMATS = ("tagged", "plain", "prose")
# Fig. 9's "revised output" joins reflection and refusal with "Therefore,"; the split looks for it.
PROSE_CONNECTOR = "Therefore,"
# A reflection is one or two sentences; a connector further in is part of an ordinary answer.
PROSE_MAX_CHARS = 600
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
    if fmt == "prose":
        return f"{_end_sentence(reflection)} {PROSE_CONNECTOR} {_lower_first(answer.strip())}"
    raise ValueError(f"unknown reflection format {fmt!r}; use one of {', '.join(REFLECTION_FORMATS)}")


def _end_sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text.rstrip(",;:") + "."


def _lower_first(text: str) -> str:
    """ "I'm sorry" stays "I'm sorry" (Fig. 9); "Sorry, …" becomes "sorry, …" after the connector."""
    first = text.split(" ", 1)[0]
    if not text or first == "I" or first.startswith(("I'", "I’")) or first.isupper():
        return text
    return text[0].lower() + text[1:]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


_PROSE_RE = re.compile(r"(?:^|(?<=[.!?]))\s*" + re.escape(PROSE_CONNECTOR) + r"\s*")


@dataclass
class Split:
    reflection: str | None  # None when the response carries no reflection
    answer: str
    method: str  # "tagged", "prose", "plain-heuristic" or "none"


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
    if fmt == "prose":
        m = _PROSE_RE.search(text, 0, PROSE_MAX_CHARS + len(PROSE_CONNECTOR) + 2)
        if m and m.start() > 0:
            return Split(text[: m.start()].strip(), _upper_first(text[m.end() :].strip()), "prose")
    if fmt == "plain":
        first, sep, rest = text.partition("\n\n")
        if sep and first.lower().startswith(PLAIN_OPENERS):
            return Split(first.strip(), rest.strip(), "plain-heuristic")
    return Split(None, text, "none")
