"""The paper's seven harm categories (App. B.1, Fig. 11), three ways to assign them, and stratified sampling.

The paper says neither how categories were assigned nor how the 200 safety samples were drawn. Every
prompt ends in one of the seven or in an explicit `other` with a reason, and `other` is never drawn:
  keyword  the seed keywords of tbr/assets/category_keywords.json alone (high precision, low recall:
           a prompt no seed matches is `other`, reason no_keyword);
  embed    (default of the local configs) seed prompts keep their keyword group; every other prompt
           goes to the nearest centroid of the seed prompts' sentence embeddings (tbr.embed), or is
           `other` ("far") when no centroid is close. Checked against a hand-labelled sample
           (tbr/assets/category_labels.jsonl, docs/results.md);
  llm      any OpenAI-compatible endpoint, strict parsing, failures counted.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.errors import DataError, EndpointError
from tbr.io import JsonlAppender, read_jsonl_tolerant, sha256_text, stable_hash

# Machine names, in the paper's Figure 11 order, with the display names and the counts read off it.
CATEGORIES = (
    "violent_crimes",
    "hate_discrimination",
    "privacy",
    "fake_news",
    "sexual_content",
    "suicide_self_harm",
    "guns_illegal_weapons",
)
DISPLAY = {
    "violent_crimes": "violent crimes",
    "hate_discrimination": "hate and discrimination",
    "privacy": "privacy",
    "fake_news": "fake news",
    "sexual_content": "sexual content",
    "suicide_self_harm": "suicide and self-harm",
    "guns_illegal_weapons": "guns and illegal weapons",
}
PAPER_COUNTS = {
    "violent_crimes": 35,
    "hate_discrimination": 31,
    "privacy": 27,
    "fake_news": 28,
    "sexual_content": 29,
    "suicide_self_harm": 28,
    "guns_illegal_weapons": 32,
}
CATEGORIZERS = ("keyword", "embed", "llm")
# embed: a prompt is assigned its nearest centroid only when the cosine is at least EMBED_MIN_SIM and
# beats the runner-up by EMBED_MARGIN (else `other`, "far"), and only when that centroid was learned
# from at least EMBED_MIN_SEEDS seed prompts (else `other`, "thin": suicide/self-harm has 11 seeds on
# Safety-Tuned LLaMAs, and its centroid pulled in corpse-disposal prompts, 0 of 8 right). Measured
# against the hand labels (tbr/assets/category_labels.jsonl) in docs/results.md.
EMBED_MIN_SIM = 0.35
EMBED_MARGIN = 0.03
EMBED_MIN_SEEDS = 30

# --------------------------------------------------------------------------- keyword seeds
# The word lists live in tbr/assets/category_keywords.json (syntax and policy in its "about"); their
# sha256 goes into the reflect/build manifests and `tbr run` stage keys, so editing a list is a new input.
# Besides the seven categories the asset names reasons for `other` (non_violent_crime, benign_intent):
# a prompt that is a crime but none of Fig. 11's categories, or one that asks how to *prevent* harm
# ("Brainstorm methods to prevent terrorism"), is `other` with that reason, never a refusal target.
KEYWORDS_ASSET = Path(__file__).resolve().parent / "assets" / "category_keywords.json"
# Hand labels of Safety-Tuned LLaMAs prompts, by content-hash id only (the data is CC BY-NC): 100 drawn
# at random and 56 from the embed categoriser's own assignments; docs/results.md has the precision.
LABELS_ASSET = KEYWORDS_ASSET.with_name("category_labels.jsonl")
OTHER = "other"


def _load_asset(path: Path = KEYWORDS_ASSET) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    cats = data.get("categories") or {}
    if set(cats) != set(CATEGORIES):
        raise DataError(f"{path}: 'categories' must list exactly {', '.join(CATEGORIES)}")
    groups = [*cats, *(data.get("other") or {})]
    if sorted(data.get("priority") or []) != sorted(groups):
        raise DataError(f"{path}: 'priority' must order every category and other-reason exactly once")
    return data


_ASSET = _load_asset()
KEYWORDS: dict[str, tuple[str, ...]] = {c: tuple(_ASSET["categories"][c]) for c in CATEGORIES}
OTHER_KEYWORDS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _ASSET["other"].items()}
OTHER_REASONS: dict[str, str] = {
    **_ASSET["other_reasons"],
    "thin": "the nearest category has too few seed prompts (EMBED_MIN_SEEDS) to extend by similarity",
    "llm_none": "the llm categorizer answered none",
}
KEYWORD_PRIORITY: tuple[str, ...] = tuple(_ASSET["priority"])


def asset_sha256() -> str:
    return sha256_text(KEYWORDS_ASSET.read_text(encoding="utf-8"))


def asset_hashes(categorizer: str) -> dict[str, str]:
    """What a categoriser reads besides its config, by hash: the keyword asset (every categoriser
    keeps a category given by the source, and keyword/embed seed from the asset), the encoder's weights."""
    if categorizer == "llm":
        return {}
    out = {"category_keywords": asset_sha256()}
    if categorizer == "embed":
        from tbr.embed import DEFAULT_ENCODER, ENCODERS

        out["encoder"] = ENCODERS[DEFAULT_ENCODER].sha256
        out["embed_rule"] = stable_hash(embed_rule())
    return out


def embed_rule() -> dict[str, Any]:
    return {"min_sim": EMBED_MIN_SIM, "margin": EMBED_MARGIN, "min_seeds": EMBED_MIN_SEEDS}


_INFLECTION = r"(?:s|es|ed|ing|er|ers|ings|d)?"


def _pattern(word: str) -> re.Pattern[str]:
    prefix = word.endswith("*")
    body = r"\s+".join(re.escape(w) for w in word.rstrip("*").split())
    tail = "" if prefix else _INFLECTION + r"(?![a-z0-9])"
    return re.compile(r"(?<![a-z0-9])" + body + tail, re.IGNORECASE)


_PATTERNS = {g: [(w, _pattern(w)) for w in words] for g, words in {**KEYWORDS, **OTHER_KEYWORDS}.items()}


def keyword_hits(text: str) -> dict[str, list[str]]:
    """The keywords of each group (category or other-reason) found in `text`; groups without hits left out."""
    hits = {g: [w for w, p in pats if p.search(text)] for g, pats in _PATTERNS.items()}
    return {g: ws for g, ws in hits.items() if ws}


def keyword_group(text: str) -> str | None:
    """Most distinct hits wins; ties by KEYWORD_PRIORITY; no hit → None."""
    hits = keyword_hits(text)
    if not hits:
        return None
    return max(KEYWORD_PRIORITY, key=lambda c: (len(hits.get(c, [])), -KEYWORD_PRIORITY.index(c)))


def keyword_category(text: str) -> str | None:
    """The seed category of `text`: one of CATEGORIES, OTHER (an other-reason matched), or None (no hit)."""
    g = keyword_group(text)
    return None if g is None else (g if g in CATEGORIES else OTHER)


# --------------------------------------------------------------------------- LLM classifier
# Accepted answers (after lower-casing and trimming quotes, punctuation and a "category:" prefix).
_ALIASES: dict[str, str | None] = {"none": None}
for _c in CATEGORIES:
    _ALIASES[DISPLAY[_c]] = _c
    _ALIASES[_c] = _c
    _ALIASES[_c.replace("_", " ")] = _c
    _ALIASES[DISPLAY[_c].replace(" and ", " & ")] = _c
_ALIASES.update(
    {
        "against privacy": "privacy",
        "suicide & self harm": "suicide_self_harm",
        "suicide and self harm": "suicide_self_harm",
        "hate": "hate_discrimination",
        "guns & illegal weapons": "guns_illegal_weapons",
    }
)

_UNPARSED = object()


def parse_llm_category(text: str) -> Any:
    """Strict parse of a classifier answer: category name, None for "none", or _UNPARSED.

    Only the first non-empty line counts, and it must be one of the accepted names exactly (up to case,
    surrounding quotes/punctuation and a leading "category:"); anything else is a failure, never a guess.
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "").strip().lower()
    line = re.sub(r"^(category|answer)\s*:\s*", "", line)
    line = line.strip(" \t\"'`*.:;,!-[]()")
    return _ALIASES.get(line, _UNPARSED)


# --------------------------------------------------------------------------- assigning + sampling


@dataclass
class CategoryReport:
    method: str
    counts: dict[str, int] = field(default_factory=dict)  # category → prompts (+ "other", "uncategorised")
    uncategorised: int = 0  # no answer at all (llm failures); `other` prompts have a reason instead
    llm_failures: int = 0  # answers that did not parse or requests that failed
    llm_failure_examples: list[str] = field(default_factory=list)
    from_source: int = 0  # prompts whose source file already carried a valid category
    reasons: list[str | None] = field(default_factory=list)  # per prompt: why it is `other` (else None)
    methods: dict[str, int] = field(default_factory=dict)  # how many prompts each method labelled
    encoder: dict[str, Any] | None = None  # the embed categoriser's encoder (name, weights hash)
    embed_rule: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        n = sum(self.counts.values())
        drawn = sum(self.counts.get(c, 0) for c in CATEGORIES)
        return {
            "method": self.method,
            "counts": self.counts,
            "paper_counts": PAPER_COUNTS,
            "coverage": round(drawn / n, 4) if n else None,  # share of prompts in one of the seven
            "other_reasons": dict(Counter(r for r in self.reasons if r)),
            "methods": self.methods,
            "uncategorised": self.uncategorised,
            "llm_failures": self.llm_failures,
            "llm_failure_examples": self.llm_failure_examples[:5],
            "from_source": self.from_source,
            "keywords_asset": {"file": KEYWORDS_ASSET.name, "sha256": asset_sha256()},
            **({"encoder": self.encoder, "embed_rule": self.embed_rule} if self.encoder else {}),
        }


def normalize_category(value: str | None) -> str | None:
    """A source file's own category label if it names one of ours, else None."""
    if not value:
        return None
    got = parse_llm_category(value)
    return None if got is _UNPARSED else got


def _reason(group: str | None) -> str:
    return "no_keyword" if group is None else group


def embed_categories(
    texts: Sequence[str], seeds: Sequence[str | None], encoder: Any = None
) -> tuple[list[str], list[float], dict[str, Any]]:
    """Nearest-centroid groups for `texts`: one centroid per seed group (category or other-reason),
    the normalised mean of its seed prompts' embeddings (tbr.embed). A text gets its nearest group
    when the rule of EMBED_MIN_SIM / EMBED_MARGIN / EMBED_MIN_SEEDS allows, else "far" or "thin".
    Returns (group per text, best cosine per text, encoder manifest)."""
    import numpy as np

    from tbr.embed import load_encoder

    enc = encoder or load_encoder()
    vecs = enc.encode(list(texts))
    groups = [g for g in KEYWORD_PRIORITY if any(s == g for s in seeds)]
    if len(groups) < 2:
        raise DataError(
            "embed categorizer: seed keywords matched fewer than two groups; nothing to learn from"
        )
    members = {g: [i for i, s in enumerate(seeds) if s == g] for g in groups}
    cents = np.stack([vecs[members[g]].mean(0) for g in groups])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    sims = vecs @ cents.T
    order = np.argsort(-sims, axis=1)
    out, best = [], []
    for i in range(len(texts)):
        first, second = sims[i, order[i, 0]], sims[i, order[i, 1]]
        g = groups[order[i, 0]]
        if first < EMBED_MIN_SIM or first - second < EMBED_MARGIN:
            g = "far"
        elif g in CATEGORIES and len(members[g]) < EMBED_MIN_SEEDS:
            g = "thin"
        out.append(g)
        best.append(float(first))
    return out, best, enc.manifest()


def categorize(
    texts: Sequence[str],
    method: str = "keyword",
    *,
    given: Sequence[str | None] | None = None,
    backend: Any = None,
    cache_path: str | Path | None = None,
    encoder: Any = None,
) -> tuple[list[str | None], list[str], CategoryReport]:
    """(category per text, method used per text, report).

    Every text ends in one of CATEGORIES or in OTHER with a reason (report.reasons): the asset's
    other-reasons, "no_keyword" (keyword method), "far" (embed method). A category given by the source
    (e.g. the built-in demo file) is kept. keyword: the seed keywords alone. embed: seed prompts keep
    their keyword group; every other prompt gets the nearest seed centroid (embed_categories). llm:
    `backend` is an OpenAIBackend; a failed or unparsable answer is counted and the prompt stays
    uncategorised (None). With `cache_path`, llm answers are appended there as they arrive and reused
    on a rerun (failed requests are not cached, so a rerun retries them).
    """
    if method not in CATEGORIZERS:
        raise DataError(f"unknown categorizer {method!r}; use one of {', '.join(CATEGORIZERS)}")
    cats: list[str | None] = [None] * len(texts)
    how = [""] * len(texts)
    reasons: list[str | None] = [None] * len(texts)
    report = CategoryReport(method)
    todo = []
    for i in range(len(texts)):
        src = normalize_category(given[i]) if given else None
        if src:
            cats[i], how[i] = src, "source"
            report.from_source += 1
        else:
            todo.append(i)
    if method in ("keyword", "embed"):
        seeds = {i: keyword_group(texts[i]) for i in todo}
        rest = [i for i in todo if seeds[i] is None] if method == "embed" else []
        if rest:
            # Centroids learn from the seeds of the whole pool, so a small pool still gets them.
            groups, sims, report.encoder = embed_categories(
                [texts[i] for i in todo], [seeds[i] for i in todo], encoder
            )
            report.embed_rule = embed_rule()
            by_i = dict(zip(todo, groups, strict=True))
            for i in rest:
                seeds[i] = by_i[i]
                how[i] = "embed"
        for i in todo:
            g = seeds[i]
            how[i] = how[i] or "keyword"
            if g in CATEGORIES:
                cats[i] = g
            else:
                cats[i], reasons[i] = OTHER, _reason(g)
    else:
        if backend is None:
            raise DataError("the llm categorizer needs an OpenAI-compatible endpoint (--category-api-base)")
        from tbr.generate import SamplingParams, chat
        from tbr.prompts import CATEGORY_CLASSIFIER_PROMPT

        params = SamplingParams(max_new_tokens=12, temperature=0.0)
        key = {i: stable_hash([backend.weights_hash, CATEGORY_CLASSIFIER_PROMPT, texts[i]]) for i in todo}
        cached = {}
        if cache_path is not None:
            cached = {r["key"]: r["answer"] for r in read_jsonl_tolerant(cache_path)[0]}
        ask = [i for i in todo if key[i] not in cached]
        convs = [chat(CATEGORY_CLASSIFIER_PROMPT.format(prompt=texts[i])) for i in ask]
        answers: dict[int, Any] = {i: cached[key[i]] for i in todo if key[i] in cached}
        if ask:
            appender = JsonlAppender(cache_path) if cache_path is not None else None

            def keep(j: int, text: str) -> None:
                if appender is not None:
                    appender.write({"key": key[ask[j]], "text": texts[ask[j]], "answer": text})

            try:
                results = backend.generate_results(convs, params, fmt="chat", on_result=keep)
            finally:
                if appender is not None:
                    appender.close()
            answers.update(zip(ask, results, strict=True))
        for i in todo:
            res = answers[i]
            how[i] = "llm"
            if isinstance(res, EndpointError):
                report.llm_failures += 1
                report.llm_failure_examples.append(str(res)[:200])
                continue
            got = parse_llm_category(res)
            if got is _UNPARSED:
                report.llm_failures += 1
                report.llm_failure_examples.append(res[:200])
                how[i] = "llm-unparsed"
                continue
            if got is None:  # the classifier said "none"
                cats[i], reasons[i] = OTHER, "llm_none"
            else:
                cats[i] = got
    counts = Counter(c or "uncategorised" for c in cats)
    report.counts = {c: counts.get(c, 0) for c in (*CATEGORIES, OTHER, "uncategorised")}
    report.uncategorised = counts.get("uncategorised", 0)
    report.reasons = reasons
    report.methods = dict(Counter(how))
    return cats, how, report


def feasibility(source: str, data_dir: str | None, categorizer: str = "keyword") -> dict[str, int]:
    """Prompts per category in a safety source (what `tbr run --plan` checks sample sizes against)."""
    from tbr.data.safety import load_safety

    prompts, _, _ = load_safety(source, data_dir, categorizer)
    return dict(Counter(p.category or "uncategorised" for p in prompts))


def seeded_order(ids: Sequence[str], seed: int, salt: str = "") -> list[int]:
    """Indices sorted by a seeded hash of each id: stable under reordering and growth of the list."""
    return sorted(range(len(ids)), key=lambda i: (stable_hash([salt, seed, ids[i]]), i))


def stratified_sample(
    ids: Sequence[str],
    categories: Sequence[str | None],
    n: int,
    seed: int,
    strata: Sequence[str] = CATEGORIES,
) -> list[int]:
    """Indices of n items spread as evenly as possible over the categories (`other` never drawn).
    `strata`: the categories drawn from, in tie-break order (the contrast stage passes its word groups).

    Each category gets floor(n/k) (k = categories present), the remainder going to the categories with the
    most items left; a category with too few items gives its share to the others. Within a category, items
    are taken in seeded-hash order, so the result depends only on (ids, categories, n, seed).
    """
    by_cat: dict[str, list[int]] = {}
    for i in seeded_order(ids, seed, "stratified"):
        if categories[i] in strata:  # `other` and uncategorised are never drawn
            by_cat.setdefault(categories[i], []).append(i)  # type: ignore[arg-type]
    available = sum(len(v) for v in by_cat.values())
    if n > available:
        raise DataError(
            f"asked for {n} categorised safety prompts but only {available} exist "
            f"({', '.join(f'{c}: {len(v)}' for c, v in sorted(by_cat.items()))}); lower n"
        )
    quota = {c: 0 for c in by_cat}
    left = n
    while left > 0:
        open_cats = [c for c in strata if c in by_cat and quota[c] < len(by_cat[c])]
        share = max(1, left // len(open_cats))
        # Largest remaining pools first, so the remainder lands where items are plentiful (deterministic).
        for c in sorted(open_cats, key=lambda c: (-(len(by_cat[c]) - quota[c]), strata.index(c))):
            take = min(share, len(by_cat[c]) - quota[c], left)
            quota[c] += take
            left -= take
            if left == 0:
                break
    picked = [i for c in strata if c in by_cat for i in by_cat[c][: quota[c]]]
    random.Random(seed).shuffle(picked)
    return picked
