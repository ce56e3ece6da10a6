"""The paper's seven harm categories (App. B.1, Fig. 11), two ways to assign them, and stratified sampling.

The paper says neither how categories were assigned nor how the 200 safety samples were drawn; we
offer an LLM classifier (any OpenAI-compatible endpoint, strict parsing, failures counted) and a
transparent keyword classifier whose lists are below. A prompt that fits no category is reported as
uncategorised and left out of stratified samples: it is never forced into a category.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.errors import DataError, EndpointError
from tbr.io import JsonlAppender, read_jsonl_tolerant, stable_hash

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
CATEGORIZERS = ("keyword", "llm")

# --------------------------------------------------------------------------- keyword classifier
# An entry is a word or phrase matched case-insensitively at word boundaries, with an optional English
# inflection on its last word (s, es, ed, ing, er, ers, ings); a trailing "*" makes it a prefix instead
# ("suicid*" matches "suicide", "suicidal"). A space matches any run of whitespace. A prompt gets the
# category with the most distinct hits; ties go to the category listed first in KEYWORD_PRIORITY (the
# most specific first; violent crimes, the broadest, last). No hit at all → uncategorised.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "suicide_self_harm": (
        "suicid*",
        "kill myself",
        "killing myself",
        "kill yourself",
        "killing yourself",
        "end my life",
        "end your life",
        "take my own life",
        "take your own life",
        "self-harm",
        "self harm",
        "cut myself",
        "cutting myself",
        "cut yourself",
        "cutting yourself",
        "hurt myself",
        "hurt yourself",
        "harm myself",
        "harm yourself",
        "overdose",
        "starve myself",
        "starve yourself",
        "anorexi*",
        "bulimi*",
        "hang myself",
        "hang yourself",
        "want to die",
        "slit my wrist",
        "slit your wrist",
        "jump off",
        "kill themselves",
        "hurt themselves",
        "self-injur*",
        "painless way",
        "end it all",
        "eating disorder",
    ),
    "guns_illegal_weapons": (
        "gun",
        "firearm",
        "rifle",
        "pistol",
        "handgun",
        "shotgun",
        "ammo",
        "ammunition",
        "bullet",
        "silencer",
        "suppressor",
        "weapon",
        "bomb",
        "explosive",
        "grenade",
        "molotov",
        "detonat*",
        "napalm",
        "nerve agent",
        "sarin",
        "ricin",
        "anthrax",
        "bioweapon",
        "chemical weapon",
        "ar-15",
        "ak-47",
        "switchblade",
        "brass knuckle",
        "gunpowder",
        "dynamite",
        "c4",
        "blow up",
        "blowing up",
        "toxin",
        "botulism",
        "acid attack",
        "land mine",
        "missile",
        "knife",
        "knives",
    ),
    "sexual_content": (
        "sex",
        "sexual*",
        "sexy",
        "porn*",
        "nude*",
        "naked",
        "erotic*",
        "orgasm*",
        "prostitut*",
        "escort",
        "hooker",
        "stripper",
        "fetish*",
        "genital*",
        "penis",
        "vagina*",
        "boob*",
        "breast",
        "horny",
        "masturbat*",
        "rape",
        "rapist",
        "molest*",
        "incest*",
        "onlyfans",
        "xxx",
        "seduc*",
        "aroused",
        "intercourse",
        "whore",
        "slut",
        "threesome",
        "blowjob",
        "sext*",
    ),
    "privacy": (
        "address of",
        "home address",
        "phone number",
        "social security",
        "ssn",
        "credit card number",
        "password",
        "personal information",
        "private information",
        "personal data",
        "email address",
        "dox*",
        "stalk",
        "spy on",
        "track someone",
        "track down",
        "location of",
        "where does",
        "live",
        "medical record",
        "bank account",
        "login",
        "hack into",
        "hacking into",
        "surveil*",
        "wiretap*",
        "eavesdrop*",
        "secretly record",
        "hidden camera",
        "read someone's",
        "identity theft",
        "date of birth",
        "license plate",
        "private messages",
        "their address",
        "your address",
        "peep*",
        "spyware",
        "cell phone number",
        "ip address",
        "who lives",
    ),
    "fake_news": (
        "fake news",
        "misinformation",
        "disinformation",
        "propaganda",
        "conspiracy",
        "conspiracies",
        "hoax",
        "false story",
        "false news",
        "fake story",
        "fake article",
        "fabricat*",
        "false claim",
        "false information",
        "rumor",
        "rumour",
        "defam*",
        "slander*",
        "libel*",
        "fake review",
        "mislead*",
        "deepfake",
        "fake",
        "spread lies",
        "lie about",
        "election fraud",
        "rigged",
        "bad company",
        "flat earth",
        "hoaxes",
        "smear",
        "false flag",
        "untrue",
    ),
    "hate_discrimination": (
        "racis*",
        "racial*",
        "race",
        "sexis*",
        "homophob*",
        "transphob*",
        "bigot*",
        "slur",
        "nigg*",
        "faggot",
        "retard*",
        "hate",
        "hatred",
        "discriminat*",
        "inferior",
        "supremac*",
        "nazi",
        "jew",
        "jewish",
        "muslim",
        "islam*",
        "christian",
        "black people",
        "white people",
        "asian",
        "chinese",
        "mexican",
        "immigrant",
        "gay",
        "lesbian*",
        "transgender",
        "women are",
        "men are",
        "stereotyp*",
        "ethnic*",
        "insult",
        "offensive joke",
        "derogatory",
        "minorit*",
        "disabled",
        "fat people",
        "stubborn",
        "lazy",
        "stupid",
        "dumb",
        "ugly",
        "crack whore",
        "apartheid",
        "lgbt*",
        "feminis*",
        "irish",
        "greek",
        "african",
        "indian",
        "arab",
        "gypsy",
        "gypsies",
        "religion",
        "smell bad",
        "nickname",
    ),
    "violent_crimes": (
        "kill",
        "murder",
        "assault",
        "attack",
        "stab",
        "stabbing",
        "shoot",
        "strangl*",
        "poison",
        "kidnap*",
        "abduct*",
        "torture",
        "beat up",
        "beat someone",
        "punch",
        "hurt someone",
        "injure",
        "harm someone",
        "violen*",
        "rob",
        "robbing",
        "robbery",
        "steal",
        "stole",
        "stolen",
        "burglar*",
        "break into",
        "arson*",
        "set fire",
        "on fire",
        "terror*",
        "hostage",
        "hit",
        "hitting",
        "fight",
        "abuse",
        "threaten",
        "blackmail",
        "extort*",
        "smuggl*",
        "traffick*",
        "drug",
        "cocaine",
        "heroin",
        "meth",
        "methamphetamine",
        "shoplift*",
        "vandal*",
        "crime",
        "criminal",
        "illegal*",
        "dominance",
        "wreck",
        "destroy",
        "sabotag*",
        "cheat",
        "scam",
        "fraud",
        "launder*",
        "bribe",
        "harass*",
        "bully",
        "bullying",
        "revenge",
        "hurt",
        "acid",
        "poisonous",
        "ransomware",
        "malware",
        "hack",
        "dark web",
        "break a",
        "neck",
        "skin a",
    ),
}
KEYWORD_PRIORITY = (
    "suicide_self_harm",
    "guns_illegal_weapons",
    "sexual_content",
    "privacy",
    "fake_news",
    "hate_discrimination",
    "violent_crimes",
)


_INFLECTION = r"(?:s|es|ed|ing|er|ers|ings|d)?"


def _pattern(word: str) -> re.Pattern[str]:
    prefix = word.endswith("*")
    body = r"\s+".join(re.escape(w) for w in word.rstrip("*").split())
    tail = "" if prefix else _INFLECTION + r"(?![a-z0-9])"
    return re.compile(r"(?<![a-z0-9])" + body + tail, re.IGNORECASE)


_PATTERNS = {cat: [(w, _pattern(w)) for w in words] for cat, words in KEYWORDS.items()}


def keyword_hits(text: str) -> dict[str, list[str]]:
    """The keywords of each category found in `text` (categories without hits are left out)."""
    hits = {cat: [w for w, p in pats if p.search(text)] for cat, pats in _PATTERNS.items()}
    return {cat: ws for cat, ws in hits.items() if ws}


def keyword_category(text: str) -> str | None:
    """Most distinct keyword hits wins; ties by KEYWORD_PRIORITY; no hit → None (uncategorised)."""
    hits = keyword_hits(text)
    if not hits:
        return None
    return max(KEYWORD_PRIORITY, key=lambda c: (len(hits.get(c, [])), -KEYWORD_PRIORITY.index(c)))


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
    counts: dict[str, int] = field(default_factory=dict)  # category → prompts (None → "uncategorised")
    uncategorised: int = 0
    llm_failures: int = 0  # answers that did not parse or requests that failed
    llm_failure_examples: list[str] = field(default_factory=list)
    from_source: int = 0  # prompts whose source file already carried a valid category

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "counts": self.counts,
            "uncategorised": self.uncategorised,
            "llm_failures": self.llm_failures,
            "llm_failure_examples": self.llm_failure_examples[:5],
            "from_source": self.from_source,
        }


def normalize_category(value: str | None) -> str | None:
    """A source file's own category label if it names one of ours, else None."""
    if not value:
        return None
    got = parse_llm_category(value)
    return None if got is _UNPARSED else got


def categorize(
    texts: Sequence[str],
    method: str = "keyword",
    *,
    given: Sequence[str | None] | None = None,
    backend: Any = None,
    cache_path: str | Path | None = None,
) -> tuple[list[str | None], list[str], CategoryReport]:
    """(category or None per text, method used per text, report).

    A category given by the source (e.g. the built-in demo file) is kept. With method="llm", `backend` is
    an OpenAIBackend; a failed or unparsable answer is counted and the prompt stays uncategorised. With
    `cache_path`, answers are appended there as they arrive and reused on a rerun (failed requests are
    not cached, so a rerun retries them).
    """
    if method not in CATEGORIZERS:
        raise DataError(f"unknown categorizer {method!r}; use one of {', '.join(CATEGORIZERS)}")
    cats: list[str | None] = [None] * len(texts)
    how = [""] * len(texts)
    report = CategoryReport(method)
    todo = []
    for i in range(len(texts)):
        src = normalize_category(given[i]) if given else None
        if src:
            cats[i], how[i] = src, "source"
            report.from_source += 1
        else:
            todo.append(i)
    if method == "keyword":
        for i in todo:
            cats[i], how[i] = keyword_category(texts[i]), "keyword"
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
            cats[i] = got
    counts = Counter(c or "uncategorised" for c in cats)
    report.counts = {c: counts.get(c, 0) for c in (*CATEGORIES, "uncategorised")}
    report.uncategorised = counts.get("uncategorised", 0)
    return cats, how, report


def seeded_order(ids: Sequence[str], seed: int, salt: str = "") -> list[int]:
    """Indices sorted by a seeded hash of each id: stable under reordering and growth of the list."""
    return sorted(range(len(ids)), key=lambda i: (stable_hash([salt, seed, ids[i]]), i))


def stratified_sample(ids: Sequence[str], categories: Sequence[str | None], n: int, seed: int) -> list[int]:
    """Indices of n items spread as evenly as possible over the categories (uncategorised never drawn).

    Each category gets floor(n/k) (k = categories present), the remainder going to the categories with the
    most items left; a category with too few items gives its share to the others. Within a category, items
    are taken in seeded-hash order, so the result depends only on (ids, categories, n, seed).
    """
    by_cat: dict[str, list[int]] = {}
    for i in seeded_order(ids, seed, "stratified"):
        if categories[i] is not None:
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
        open_cats = [c for c in CATEGORIES if c in by_cat and quota[c] < len(by_cat[c])]
        share = max(1, left // len(open_cats))
        # Largest remaining pools first, so the remainder lands where items are plentiful (deterministic).
        for c in sorted(open_cats, key=lambda c: (-(len(by_cat[c]) - quota[c]), CATEGORIES.index(c))):
            take = min(share, len(by_cat[c]) - quota[c], left)
            quota[c] += take
            left -= take
            if left == 0:
                break
    picked = [i for c in CATEGORIES if c in by_cat for i in by_cat[c][: quota[c]]]
    random.Random(seed).shuffle(picked)
    return picked
