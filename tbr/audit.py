"""The reflection audit (beyond the paper, which never checks its reflections).

Each reflection is flagged when it is empty, truncated, too long, complies with the request, does not
describe the query, copies the prompt's worked example, or contains a refusal phrase (which would make
rule-based judges see a refusal in the reflection itself). `tbr reflect --audit drop` keeps only clean
ones; `keep` keeps all and still counts the flags in audit.json.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tbr.prompts import EXTERNAL_REFLECTION_PROMPT, INTERNAL_REFLECTION_FEWSHOT, PAPER_REFUSAL_STRINGS

AUDIT_FLAGS = (
    "empty",
    "truncated",
    "too_long",
    "compliance",
    "off_topic",
    "copies_example",
    "refusal_phrase",
)
_STOPWORDS = frozenset(
    """a an the and or but if then of to in on at by for with from into onto about as is are was were be been
    being do does did doing have has had having i me my you your yours he him his she her it its we us our
    they them their this that these those what which who whom whose how why when where there here can could
    would should will shall may might must not no so than too very just also any some all each every other
    such own same more most few both only out up down over under again once query asks ask asking request
    requests requesting question instruction explain describe list make give tell write create provide
    someone something way ways one get using use""".split()  # noqa: SIM905
)
# Signs that a reflection starts doing what the harmful request asks (step lists, how-to, code).
_COMPLIANCE = [
    re.compile(p, re.IGNORECASE | re.MULTILINE)
    for p in (
        r"\bstep\s*\d",
        r"^\s*\d+[.)]\s+\S",
        r"^\s*[-*•]\s+\S",
        r"\bhere(?:'s| is| are)\s+(?:how|a|an|the|some|what|step)",
        r"\bfirst(?:ly)?,?\s+you\b",
        r"\b(?:then|next|finally),?\s+you\s+(?:should|need|can|will|must)\b",
        r"\byou\s+(?:will\s+)?need\s+(?:to|a|an|some)\b",
        r"```|^\s*(?:def |import |#include|sudo |\$ )|<script",
        # An imperative instruction opening a sentence ("Mix the …", "Buy a …").
        r"(?:^|[.!?]\s+)(?:mix|buy|take|get|go|put|add|pour|heat|combine|place|insert|cut|hide|wait|"
        r"find|open|install|download|run|grab|obtain|purchase|attach|light|aim|shoot|stab|inject|"
        r"dissolve|wrap|fill|start by|begin by|make sure)\s",
    )
]


def _stem(word: str) -> str:
    for suf in ("ing", "ed", "es", "s", "ly", "er"):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            word = word[: -len(suf)]
            break
    return word.rstrip("e")  # "mosque"/"mosques", "make"/"making" meet at one stem


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


# A reflection that repeats 6 consecutive words of the prompt's own worked examples (Figure 8's
# explanations, Figure 9's pet example) copied the example instead of reflecting on the query. The
# shared opener "This query asks for" is not counted: every good reflection starts like that.
_COPY_N = 6


def example_lines(prompt: str, prefix: str) -> list[str]:
    """The worked examples' reflections in a few-shot prompt: its lines after `prefix`."""
    return [ln.removeprefix(prefix) for ln in prompt.splitlines() if ln.startswith(prefix)]


def example_ngrams(lines: list[str]) -> frozenset[tuple[str, ...]]:
    grams = set()
    for ln in lines:
        w = _words(ln)
        start = 4 if w[:3] == ["this", "query", "asks"] else 0
        grams.update(tuple(w[i : i + _COPY_N]) for i in range(start, len(w) - _COPY_N + 1))
    return frozenset(grams)


_EXAMPLE_NGRAMS = example_ngrams(
    example_lines(INTERNAL_REFLECTION_FEWSHOT, "Explain: ")
    + [ln.split(" Therefore,")[0] for ln in example_lines(EXTERNAL_REFLECTION_PROMPT, "revised output: ")]
)


def copies_example(text: str, grams: frozenset[tuple[str, ...]] = _EXAMPLE_NGRAMS) -> bool:
    w = _words(text)
    return any(tuple(w[i : i + _COPY_N]) in grams for i in range(len(w) - _COPY_N + 1))


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z0-9']+", text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def audit_reflection(
    reflection: str | None,
    instruction: str,
    *,
    max_words: int = 60,
    min_overlap: float = 0.2,
    examples: frozenset[tuple[str, ...]] = _EXAMPLE_NGRAMS,
) -> list[str]:
    """The AUDIT_FLAGS that apply to one reflection (an empty list means clean). `examples`: the
    n-grams of the prompt's worked examples (default: Figures 8 and 9)."""
    text = (reflection or "").strip()
    if not re.search(r"[A-Za-z0-9]", text):
        return ["empty"]
    flags = []
    if text[-1] not in ".!?\"')…":
        flags.append("truncated")  # generation ran out of tokens mid-sentence
    if len(text.split()) > max_words:
        flags.append("too_long")
    if any(p.search(text) for p in _COMPLIANCE):
        flags.append("compliance")
    query = content_words(instruction)
    if query and len(query & content_words(text)) / len(query) < min_overlap:
        flags.append("off_topic")
    if copies_example(text, examples):
        flags.append("copies_example")
    low = text.lower()
    if any(s.lower() in low for s in PAPER_REFUSAL_STRINGS):
        flags.append("refusal_phrase")
    return flags


def summarize(
    rows: Sequence[dict[str, Any]], split_counts: Counter, *, action: str, max_words: int, min_overlap: float
) -> dict[str, Any]:
    """audit.json: how many reflections were flagged, why, and how many were kept, per category."""
    flag_counts = Counter(f for r in rows for f in r["flags"])
    return {
        "n": len(rows),
        "flagged": sum(1 for r in rows if r["flags"]),
        "clean": sum(1 for r in rows if not r["flags"]),
        "kept": sum(1 for r in rows if r["kept"]),
        "action": action,
        "flags": {f: flag_counts.get(f, 0) for f in (*AUDIT_FLAGS, "split_failed")},
        "split_methods": dict(split_counts),
        "per_category": {
            c: {"n": n, "kept": sum(1 for r in rows if r["category"] == c and r["kept"])}
            for c, n in Counter(r["category"] for r in rows).items()
        },
        "thresholds": {"max_words": max_words, "min_overlap": min_overlap},
    }
