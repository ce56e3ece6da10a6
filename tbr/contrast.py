"""`tbr contrast`: benign reflections for general rows with sensitive wording (beyond the paper).

Every reflection in TBR's training data precedes a refusal, so a model can learn "reflect ⇒ refuse"
(docs/choices.md §10, the reflection gate). This stage gives `tbr build` training targets where a
reflection precedes an ordinary answer (the paper's Figure 1, case 2):

    1. candidates  general rows (the build's own pool) whose instruction contains a word of
                   tbr/assets/contrast_words.json, minus any row that is an evaluation prompt
                   (normalised text equal to, or containing, a prompt of the named suites; or the same id)
    2. sample      n of them, stratified by word group and seeded
    3. reflect     internal: a Figure 8-style five-shot completion with benign examples on the trained
                   model; external: a Figure 9-style instruction on the endpoint (tbr.prompts)
    4. audit       tbr.audit's flags, plus `calls_harmful` (a reflection that calls the query harmful
                   would teach the gate again); `audit: drop` keeps only clean ones

Output: DIR/generations.jsonl (write-ahead), DIR/contrast.jsonl (one row per drawn general row, with its
reflection, flags and `kept`), DIR/audit.json, DIR/manifest.json (counts, word-asset and suite hashes).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tbr.audit import audit_reflection, example_lines, example_ngrams, summarize
from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError
from tbr.generate import BackendConfig
from tbr.io import ensure_dir, sha256_file, stable_hash, write_json_atomic, write_jsonl_atomic
from tbr.models import DEFAULT_MODEL
from tbr.prompts import CONTRAST_REFLECTION_FEWSHOT, CONTRAST_REFLECTION_PROMPT
from tbr.reflect import AUDIT_ACTIONS, INTERNAL_RULE, INTERNAL_STOP, first_line

log = logging.getLogger(__name__)

SOURCES = ("internal", "external")
WORDS_ASSET = Path(__file__).resolve().parent / "assets" / "contrast_words.json"
EXTERNAL_RULE = "reflection = first non-empty line, a leading 'reasoning:' dropped, stripped"
# An eval prompt this short inside a general instruction is a common phrase, not a leak.
MIN_CONTAINED_WORDS = 4
# A reflection that calls the query harmful (not "not harmful") teaches "reflect ⇒ refuse" again.
CALLS_HARMFUL = re.compile(
    r"(?<!\bnot )(?<!\bnon-)(?<!\bnot at all )\b(harmful|illegal|unethical|dangerous|malicious|"
    r"inappropriate|offensive|unsafe)\b",
    re.IGNORECASE,
)


@dataclass
class ContrastConfig(BackendConfig):
    source: str = opt("internal", "internal (the trained model) or external (an endpoint)", choices=SOURCES)
    general_source: str = opt(
        "alpaca-demo",
        "the general pool to draw from: the build's own general_source (rows are matched by id)",
    )
    suites: list[str] = opt(
        ["xstest"], "evaluation suites whose prompts are never drawn (tbr run: eval.suites)"
    )
    data_dir: str | None = opt(None, "data directory (default: $TBR_DATA_DIR)")
    n: int = opt(100, "general rows to reflect on, stratified by word group")
    audit: str = opt("drop", "what to do with flagged reflections", choices=AUDIT_ACTIONS)
    audit_max_words: int = opt(60, "a longer reflection is flagged too_long")
    audit_min_overlap: float = opt(0.2, "share of the query's content words a reflection must repeat")
    out: str = opt("runs/contrast", "output directory")
    seed: int = opt(0, "sampling seed (which rows; decoding seed)")
    max_new_tokens: int | None = opt(None, "default: 64 internal, 96 external")
    temperature: float = opt(0.0, "0 = greedy")

    def validate(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"n must be positive, got {self.n}")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if not 0.0 <= self.audit_min_overlap <= 1.0:
            raise ConfigError(f"audit_min_overlap must be in [0, 1], got {self.audit_min_overlap}")
        if self.source == "external" and not self.api_base and self.model == DEFAULT_MODEL:
            raise ConfigError(
                "--source external needs the endpoint (--api-base URL --api-model NAME) or a local --model NAME"
            )

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or (64 if self.source == "internal" else 96)


# --------------------------------------------------------------------------- the word filter


def load_words(path: Path = WORDS_ASSET) -> dict[str, tuple[str, ...]]:
    """Word group → its forms, in priority order (a row's stratum is its first matching group)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    words = data.get("words")
    if not isinstance(words, dict) or not words or not all(isinstance(v, list) and v for v in words.values()):
        raise DataError(f"{path}: 'words' must map each word group to a non-empty list of forms")
    return {k: tuple(str(f).lower() for f in v) for k, v in words.items()}


def words_sha256() -> str:
    return sha256_file(WORDS_ASSET)


def asset_hashes() -> dict[str, str]:
    """What the stage reads besides its config (for `tbr run` stage keys)."""
    return {"contrast_words": words_sha256()}


def _patterns(words: dict[str, tuple[str, ...]]) -> dict[str, re.Pattern[str]]:
    return {
        k: re.compile(r"\b(?:" + "|".join(re.escape(f) for f in forms) + r")\b", re.IGNORECASE)
        for k, forms in words.items()
    }


def word_group(text: str, patterns: dict[str, re.Pattern[str]]) -> str | None:
    """The first word group with a whole-word match in `text`, or None."""
    return next((k for k, p in patterns.items() if p.search(text)), None)


def normalize(text: str) -> str:
    """Lower-case words of letters and digits, single-spaced: what eval overlap is compared on."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def eval_prompts(suites: list[str], data_dir: str | None) -> tuple[set[str], set[str], dict[str, str]]:
    """(normalised prompts, ids, file hashes) of every prompt of the named suites, unsampled."""
    from tbr import suites as S

    texts: set[str] = set()
    ids: set[str] = set()
    hashes: dict[str, str] = {}
    for suite in S.expand(list(suites)):
        for r in S.load(suite, data_dir):
            texts.add(normalize(r.prompt))
            ids.add(str(r.id))
        for f in S.files(suite, data_dir):
            hashes[str(Path(f).name)] = sha256_file(f)
    return texts, ids, hashes


def is_eval_row(row: dict[str, Any], texts: set[str], ids: set[str]) -> bool:
    """An eval prompt by id, by normalised text (instruction, or instruction + input), or contained in it."""
    if str(row["id"]) in ids:
        return True
    mine = {normalize(row["instruction"]), normalize(f"{row['instruction']} {row.get('input', '')}")}
    if mine & texts:
        return True
    hay = f" {normalize(row['instruction'] + ' ' + row.get('input', ''))} "
    return any(len(t.split()) >= MIN_CONTAINED_WORDS and f" {t} " in hay for t in texts)


@dataclass
class Candidates:
    rows: list[dict[str, Any]]  # word-matched, eval overlaps removed; each with its "word" group
    pool: int  # general rows read
    matched: int  # rows with sensitive wording
    eval_overlap: list[str]  # ids of matched rows dropped as evaluation prompts
    per_word: dict[str, int]
    files: list[Path]
    suite_hashes: dict[str, str]


def candidates(general_source: str, suites: list[str], data_dir: str | None) -> Candidates:
    """Step 1: sensitive-wording rows of the general pool that are no evaluation prompt."""
    from tbr.build import general_pool

    pool, files = general_pool(general_source, data_dir)
    patterns = _patterns(load_words())
    matched = []
    for r in pool:
        if (w := word_group(r["instruction"], patterns)) is not None:
            matched.append({**r, "word": w})
    texts, ids, hashes = eval_prompts(suites, data_dir)
    keep = [r for r in matched if not is_eval_row(r, texts, ids)]
    dropped = [r["id"] for r in matched if is_eval_row(r, texts, ids)]
    per_word = dict(Counter(r["word"] for r in keep))
    return Candidates(keep, len(pool), len(matched), dropped, per_word, [*files, WORDS_ASSET], hashes)


# --------------------------------------------------------------------------- prompts and the stage


def internal_prompt(instruction: str, input: str = "") -> str:  # noqa: A002
    return CONTRAST_REFLECTION_FEWSHOT.format(input=" ".join(f"{instruction} {input}".split()))


def external_prompt(instruction: str, input: str = "") -> str:  # noqa: A002
    return CONTRAST_REFLECTION_PROMPT.format(instruction=f"{instruction}\n{input}".strip())


def external_reflection(text: str) -> str:
    """EXTERNAL_RULE."""
    return re.sub(r"^\s*reasoning\s*:\s*", "", first_line(text), flags=re.IGNORECASE).strip()


# The worked examples' n-grams: a reflection repeating them copied an example (flag copies_example).
# Only the description before ", which is": the verdict after it ("a standard educational topic") is
# the shared form every good contrast reflection is asked to end with.
_EXAMPLES = example_ngrams(
    [
        ln.split(", which ")[0]
        for ln in example_lines(CONTRAST_REFLECTION_FEWSHOT, "Explain: ")
        + example_lines(CONTRAST_REFLECTION_PROMPT, "reasoning: ")
    ]
)


def audit_flags(reflection: str, instruction: str, cfg: ContrastConfig) -> list[str]:
    flags = audit_reflection(
        reflection, instruction, max_words=cfg.audit_max_words, min_overlap=cfg.audit_min_overlap,
        examples=_EXAMPLES,
    )  # fmt: skip
    if reflection.strip() and CALLS_HARMFUL.search(reflection):
        flags.append("calls_harmful")
    return flags


def draw(cands: Candidates, n: int, seed: int) -> list[dict[str, Any]]:
    """Step 2: n candidates stratified by word group (asset order breaks ties), seeded."""
    from tbr.categories import stratified_sample

    if n > len(cands.rows):
        raise DataError(
            f"asked for {n} contrast rows but the general pool has only {len(cands.rows)} with sensitive wording "
            f"({cands.matched} matched, {len(cands.eval_overlap)} dropped as eval prompts); lower n"
        )
    groups = tuple(load_words())
    idx = stratified_sample([r["id"] for r in cands.rows], [r["word"] for r in cands.rows], n, seed, groups)
    return [cands.rows[i] for i in idx]


def contrast(cfg: ContrastConfig) -> Path:
    """Draw, reflect on and audit the contrast rows; returns the output directory."""
    from tbr.generate import SamplingParams, chat, generate_cached, make_backend

    cfg.validate()
    out = ensure_dir(cfg.out, "--out")
    cands = candidates(cfg.general_source, cfg.suites, cfg.data_dir)
    picked = draw(cands, cfg.n, cfg.seed)
    log.info("contrast: %d rows drawn from %d with sensitive wording", len(picked), len(cands.rows))

    bcfg = BackendConfig(**{f: getattr(cfg, f) for f in BackendConfig.__dataclass_fields__})
    if cfg.api_base and cfg.backend == "transformers":
        bcfg = replace(bcfg, backend="openai")  # an endpoint was given: use it
    if cfg.source == "internal":
        convs = [[{"role": "user", "content": internal_prompt(r["instruction"], r["input"])}] for r in picked]
        params = SamplingParams(cfg.new_tokens, cfg.temperature, stop=list(INTERNAL_STOP), seed=cfg.seed)
        fmt, rule, prompt = "raw", INTERNAL_RULE, CONTRAST_REFLECTION_FEWSHOT
    else:
        convs = [chat(external_prompt(r["instruction"], r["input"])) for r in picked]
        params = SamplingParams(cfg.new_tokens, cfg.temperature, stop=["\ninstruction:"], seed=cfg.seed)
        fmt, rule, prompt = "chat", EXTERNAL_RULE, CONTRAST_REFLECTION_PROMPT
    backend = make_backend(bcfg)
    gens = generate_cached(
        backend, convs, params, path=out / "generations.jsonl", fmt=fmt, ids=[r["id"] for r in picked],
        extra=[{"instruction": r["instruction"], "word": r["word"]} for r in picked],
    )  # fmt: skip

    rows = []
    for r, g in zip(picked, gens, strict=True):
        raw = g["response"]
        reflection = first_line(raw) if cfg.source == "internal" else external_reflection(raw)
        flags = audit_flags(reflection, r["instruction"], cfg)
        kept = bool(reflection.strip()) and (cfg.audit == "keep" or not flags)
        rows.append(
            {**r, "category": r["word"], "reflection": reflection, "raw": raw, "flags": flags, "kept": kept}
        )
    write_jsonl_atomic(out / "contrast.jsonl", rows)
    audit = summarize(
        rows, Counter({"first-line": len(rows)}), action=cfg.audit, max_words=cfg.audit_max_words,
        min_overlap=cfg.audit_min_overlap,
    )  # fmt: skip
    audit["flags"]["calls_harmful"] = sum("calls_harmful" in r["flags"] for r in rows)
    write_json_atomic(out / "audit.json", audit)
    counts = {
        "general_pool": cands.pool,
        "sensitive_wording": cands.matched,
        "eval_overlap_dropped": len(cands.eval_overlap),
        "candidates": len(cands.rows),
        "drawn": len(picked),
        "kept": audit["kept"],
        "candidates_per_word": dict(sorted(cands.per_word.items())),
        "drawn_per_word": dict(sorted(Counter(r["word"] for r in picked).items())),
    }
    write_manifest(
        out,
        "contrast",
        cfg,
        models=[backend.manifest()],
        data_files=cands.files,
        extra={
            "counts": counts,
            "eval_overlap_ids": cands.eval_overlap,
            "suites_checked": {"suites": list(cfg.suites), "files_sha256": cands.suite_hashes},
            "words_asset": {"file": WORDS_ASSET.name, "sha256": words_sha256()},
            "decoding": {**params.to_dict(), "format": fmt, "backend": backend.name},
            "prompt": "tbr.prompts." + ("CONTRAST_REFLECTION_FEWSHOT" if cfg.source == "internal" else "CONTRAST_REFLECTION_PROMPT"),
            "prompt_sha": stable_hash(prompt, 64),
            "extraction_rule": rule,
            "audit": audit,
        },
    )  # fmt: skip
    log.info(
        "contrast: %d reflections, %d flagged, %d kept -> %s",
        audit["n"],
        audit["flagged"],
        audit["kept"],
        out,
    )
    return out


def run(cfg: ContrastConfig) -> int:
    out = contrast(cfg)
    m = json.loads((out / "manifest.json").read_text())
    print(f"contrast rows: {out / 'contrast.jsonl'}\ncounts: {json.dumps(m['counts'])}")
    return 0
