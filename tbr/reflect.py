"""`tbr reflect`: safety reflections for a stratified sample of harmful instructions (paper §4.1).

    internal  the paper's Figure 8 five-shot prompt, verbatim, on the model being trained (raw completion)
    external  the paper's Figure 9 "revise" prompt, verbatim, on any OpenAI-compatible endpoint (GPT-4 in
              the paper); its answer is reflection + refusal, which we split again

`prompt` can swap them (beyond the paper): Figure 8 on an external model asks a stronger model that
cannot follow Figure 9 (a small local one echoes the refusal back) for the internal kind of reflection,
so that only the reflecting model differs between the two arms.

Generations go to DIR/generations.jsonl as they finish (write-ahead; a rerun resumes). From them we derive
DIR/reflections.jsonl (one row per safety prompt), DIR/audit.json and DIR/manifest.json. The audit goes
beyond the paper, which never checks its reflections: each reflection is flagged when it is empty,
truncated, too long, complies with the request, does not describe the query, or contains a refusal phrase
(which would make rule-based judges see a refusal in the reflection itself).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tbr.audit import audit_reflection, summarize
from tbr.config import opt, write_manifest
from tbr.data.safety import SafetyPrompt, load_safety
from tbr.errors import ConfigError
from tbr.generate import BackendConfig
from tbr.io import ensure_dir, stable_hash, write_json_atomic, write_jsonl_atomic
from tbr.models import DEFAULT_MODEL
from tbr.prompts import (
    EXTERNAL_REFLECTION_PROMPT,
    INTERNAL_REFLECTION_FEWSHOT,
    STANDARD_REFUSAL,
)

log = logging.getLogger(__name__)

SOURCES = ("internal", "external")
PROMPTS = ("auto", "figure8", "figure9")
EXTRACTS = ("first-line", "first-sentence")
AUDIT_ACTIONS = ("drop", "keep")

# Internal generation stops only at the next "Instruction:" (not at "\n"): small models often put a
# newline right after "Explain:", and a newline stop would then return an empty reflection. The
# reflection is the first non-empty line of what comes back (INTERNAL_RULE, recorded in the manifest).
INTERNAL_STOP = ["Instruction:"]
INTERNAL_RULE = "stop at 'Instruction:'; reflection = first non-empty line, stripped"
SENTENCE_RULE = (
    "stop at 'Instruction:'; reflection = the first sentence of the first non-empty line (up to . ! or ? "
    "before a space, the end, or a glued-on speaker tag such as 'Human:'; not after a lone letter: U.S.)"
)
EXTERNAL_RULE = (
    "drop a leading 'revised output:'; find the refusal verbatim, else its first sentence ignoring case, "
    "whitespace and punctuation; reflection = the text before it, minus a trailing connector "
    "('Therefore,' ...); the training answer stays the configured refusal, unchanged"
)


@dataclass
class ReflectConfig(BackendConfig):
    source: str = opt(
        "internal", "internal (Fig. 8, the trained model) or external (Fig. 9)", choices=SOURCES
    )
    safety_source: str = opt(
        "stl-safety", "stl-safety, hh-rlhf, demo-safety (built in) or an Alpaca-format .json/.jsonl"
    )
    data_dir: str | None = opt(None, "data directory (default: $TBR_DATA_DIR)")
    n: int = opt(200, "safety prompts to reflect on, sampled stratified by harm category")
    categorizer: str = opt(
        "keyword",
        "how harm categories are assigned: seed keywords, + embedding nearest centroid, or an LLM",
        choices=("keyword", "embed", "llm"),
    )
    category_api_base: str | None = opt(None, "endpoint for the llm categorizer (default: --api-base)")
    category_api_model: str | None = opt(None, "model for the llm categorizer (default: --api-model)")
    refusal: str = opt(STANDARD_REFUSAL, "the standardized refusal (Figure 9's output)")
    prompt: str = opt(
        "auto",
        "auto: Figure 8 for internal, Figure 9 for external; figure8/figure9 for either",
        choices=PROMPTS,
    )
    extract: str = opt(
        "first-line",
        "Figure 8's answer → reflection: its first line (the paper's one-sentence examples), or that "
        "line's first sentence, for models that run on past one sentence without a newline",
        choices=EXTRACTS,
    )
    audit: str = opt("drop", "what to do with flagged reflections", choices=AUDIT_ACTIONS)
    audit_max_words: int = opt(60, "a longer reflection is flagged too_long")
    audit_min_overlap: float = opt(0.2, "share of the query's content words a reflection must repeat")
    out: str = opt("runs/reflect", "output directory")
    seed: int = opt(0, "sampling seed (which prompts; decoding seed)")
    max_new_tokens: int | None = opt(None, "default: 64 with Figure 8, 160 with Figure 9")
    temperature: float = opt(0.0, "0 = greedy")

    def validate(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"n must be positive, got {self.n}")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if not self.refusal.strip():
            raise ConfigError("the refusal text is empty")
        if self.extract != "first-line" and self.figure != "figure8":
            raise ConfigError("extract applies to Figure 8's answers; Figure 9's are split at the refusal")
        if not 0.0 <= self.audit_min_overlap <= 1.0:
            raise ConfigError(f"audit_min_overlap must be in [0, 1], got {self.audit_min_overlap}")
        if self.source == "external" and not self.api_base and self.model == DEFAULT_MODEL:
            # Otherwise the "stronger LLM" would silently be the small local default model.
            raise ConfigError(
                "--source external needs the stronger model's endpoint (--api-base URL --api-model NAME) "
                "or a local --model NAME"
            )

    @property
    def figure(self) -> str:
        """The prompt asked: figure8 (a few-shot completion) or figure9 (a chat "revise" request)."""
        if self.prompt != "auto":
            return self.prompt
        return "figure8" if self.source == "internal" else "figure9"

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or (64 if self.figure == "figure8" else 160)


# --------------------------------------------------------------------------- prompts and splitting


def internal_prompt(instruction: str, input: str = "") -> str:  # noqa: A002
    # Figure 8 is line-based, so a multi-line instruction is folded onto one line.
    text = " ".join(f"{instruction} {input}".split())
    return INTERNAL_REFLECTION_FEWSHOT.format(input=text)


def external_prompt(instruction: str, refusal: str, input: str = "") -> str:  # noqa: A002
    text = f"{instruction}\n{input}".strip()
    return EXTERNAL_REFLECTION_PROMPT.format(instruction=text, output=refusal)


def first_line(text: str) -> str:
    """INTERNAL_RULE: the first non-empty line."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def first_line_sentence(text: str) -> str:
    """SENTENCE_RULE. Without a sentence end the whole line comes back, and the audit flags it truncated."""
    line = first_line(text)
    # a period after a lone letter is an abbreviation (U.S., e.g.), not a sentence end
    m = re.match(r"(.+?(?<!\b[A-Za-z])[.!?])(?=\s|$|[A-Z][a-z]*:)", line)
    return m.group(1) if m else line


def _normalized(text: str) -> tuple[str, list[int]]:
    """Lower-cased letters and digits only, with each kept character's index in `text`."""
    chars, where = [], []
    for i, ch in enumerate(text):
        if ch.isalnum():
            chars.append(ch.lower())
            where.append(i)
    return "".join(chars), where


def first_sentence(text: str) -> str:
    m = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.DOTALL)
    return m.group(1) if m else text.strip()


_CONNECTOR = re.compile(
    r"[\s,;:\-–—]*\b(therefore|thus|hence|so|however|but|and|that said|as such|consequently|accordingly|"
    r"for this reason|for these reasons|with that in mind|in this case|unfortunately|nevertheless|"
    r"nonetheless|that being said|in light of this)\b[\s,;:]*$",
    re.IGNORECASE,
)


@dataclass
class ExternalSplit:
    reflection: str | None  # None: the refusal was not found
    method: str  # exact | first-sentence-normalized | refusal-not-found
    refusal_found: str  # the refusal text as the model wrote it (from the match to the end)
    connector: str  # the connector stripped from the end of the reflection ("" if none)


def split_external(output: str, refusal: str = STANDARD_REFUSAL) -> ExternalSplit:
    """Split a Figure 9 "revised output" into (reflection, refusal); see EXTERNAL_RULE."""
    text = re.sub(r"^\s*(revised output\s*:)\s*", "", output.strip(), flags=re.IGNORECASE).strip()
    exact = refusal.strip().rstrip(".")
    pos, method = text.find(exact), "exact"
    if pos < 0:
        needle, _ = _normalized(first_sentence(refusal))
        hay, where = _normalized(text)
        k = hay.find(needle) if needle else -1
        if k < 0:
            return ExternalSplit(None, "refusal-not-found", "", "")
        pos, method = where[k], "first-sentence-normalized"
    head = text[:pos].strip().strip("\"'").strip()
    connector = ""
    while m := _CONNECTOR.search(head):
        connector = (m.group(0).strip().lstrip(",;:-–— ") + " " + connector).strip()
        head = head[: m.start()].rstrip()
    head = head.rstrip(" ,;:-–—")
    if connector and head and head[-1] not in ".!?":
        head += "."  # "…, therefore" → "…." : the sentence ended where the connector began
    return ExternalSplit(head, method, text[pos:].strip(), connector)


# --------------------------------------------------------------------------- the stage


def _backend_config(cfg: ReflectConfig) -> BackendConfig:
    fields = {f: getattr(cfg, f) for f in BackendConfig.__dataclass_fields__}
    bcfg = BackendConfig(**fields)
    if cfg.api_base and cfg.backend == "transformers":
        bcfg = replace(bcfg, backend="openai")  # an endpoint was given: use it
    return bcfg


def _category_backend(cfg: ReflectConfig) -> Any:
    if cfg.categorizer != "llm":
        return None
    base = cfg.category_api_base or cfg.api_base
    if not base:
        raise ConfigError("--categorizer llm needs --category-api-base (or --api-base)")
    from tbr.generate.openai import OpenAIBackend

    return OpenAIBackend(
        base,
        cfg.category_api_model or cfg.api_model or cfg.model,
        api_key_env=cfg.api_key_env,
        max_concurrency=cfg.max_concurrency,
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
    )


def _generate(cfg: ReflectConfig, picked: list[SafetyPrompt], out: Path) -> tuple[Any, list, Any, str, str]:
    """Each picked prompt through Figure 8 or Figure 9 (`cfg.figure`), write-ahead cached."""
    from tbr.generate import SamplingParams, chat, generate_cached, make_backend

    bcfg = _backend_config(cfg)
    if cfg.figure == "figure8":
        convs = [[{"role": "user", "content": internal_prompt(p.instruction, p.input)}] for p in picked]
        params = SamplingParams(cfg.new_tokens, cfg.temperature, stop=list(INTERNAL_STOP), seed=cfg.seed)
        fmt, rule = "raw", SENTENCE_RULE if cfg.extract == "first-sentence" else INTERNAL_RULE
    else:
        convs = [chat(external_prompt(p.instruction, cfg.refusal, p.input)) for p in picked]
        params = SamplingParams(cfg.new_tokens, cfg.temperature, seed=cfg.seed)
        fmt, rule = "chat", EXTERNAL_RULE
    backend = make_backend(bcfg)
    gens = generate_cached(
        backend,
        convs,
        params,
        path=out / "generations.jsonl",
        fmt=fmt,
        ids=[p.id for p in picked],
        extra=[{"instruction": p.instruction, "category": p.category} for p in picked],
    )
    return backend, gens, params, fmt, rule


def _audit_rows(
    cfg: ReflectConfig, picked: list[SafetyPrompt], gens: list[dict]
) -> tuple[list[dict], Counter]:
    """One reflections.jsonl row per prompt: the split reflection, its audit flags, kept or not."""
    rows, split_counts = [], Counter()
    for p, g in zip(picked, gens, strict=True):
        raw = g["response"]
        split_info: dict[str, Any] = {}
        if cfg.figure == "figure8":
            pick = first_line_sentence if cfg.extract == "first-sentence" else first_line
            reflection: str | None = pick(raw)
            split_counts[cfg.extract] += 1
        else:
            s = split_external(raw, cfg.refusal)
            reflection = s.reflection
            split_counts[s.method] += 1
            split_info = {"split": s.method, "refusal_found": s.refusal_found, "connector": s.connector}
        if reflection is None:
            flags = ["split_failed"]
        else:
            flags = audit_reflection(
                reflection, p.instruction, max_words=cfg.audit_max_words, min_overlap=cfg.audit_min_overlap
            )
        # A split failure leaves no reflection to keep, whatever --audit says.
        kept = reflection is not None and bool(reflection.strip()) and (cfg.audit == "keep" or not flags)
        rows.append(
            {
                "id": p.id,
                "instruction": p.instruction,
                "input": p.input,
                "category": p.category,
                "category_method": p.category_method,
                "category_reason": p.category_reason,
                "source": p.source,
                "reflection": reflection,
                "refusal": cfg.refusal,
                "raw": raw,
                **split_info,
                "flags": flags,
                "kept": kept,
            }
        )
    return rows, split_counts


def reflect(cfg: ReflectConfig) -> Path:
    """Generate, split and audit reflections; returns the output directory."""
    from tbr.categories import stratified_sample

    cfg.validate()
    out = ensure_dir(cfg.out, "--out")
    prompts, data_report, files = load_safety(
        cfg.safety_source, cfg.data_dir, cfg.categorizer, _category_backend(cfg), out / "categories.jsonl"
    )
    picked = [
        prompts[i]
        for i in stratified_sample([p.id for p in prompts], [p.category for p in prompts], cfg.n, cfg.seed)
    ]
    log.info("reflect: %d safety prompts sampled from %d (%s)", len(picked), len(prompts), cfg.safety_source)

    backend, gens, params, fmt, rule = _generate(cfg, picked, out)
    rows, split_counts = _audit_rows(cfg, picked, gens)
    write_jsonl_atomic(out / "reflections.jsonl", rows)
    audit = summarize(
        rows, split_counts, action=cfg.audit, max_words=cfg.audit_max_words, min_overlap=cfg.audit_min_overlap
    )
    write_json_atomic(out / "audit.json", audit)
    write_manifest(
        out,
        "reflect",
        cfg,
        models=[backend.manifest()],
        data_files=files,
        extra={
            "decoding": {**params.to_dict(), "format": fmt, "backend": backend.name},
            "prompt": "Figure 8 (tbr.prompts.INTERNAL_REFLECTION_FEWSHOT)"
            if cfg.figure == "figure8"
            else "Figure 9 (tbr.prompts.EXTERNAL_REFLECTION_PROMPT)",
            "prompt_sha": stable_hash(
                INTERNAL_REFLECTION_FEWSHOT if cfg.figure == "figure8" else EXTERNAL_REFLECTION_PROMPT, 64
            ),
            "extraction_rule": rule,
            "safety_data": data_report,
            "audit": audit,
        },
    )
    log.info(
        "reflect: %d reflections, %d flagged (%s), %d kept -> %s",
        audit["n"],
        audit["flagged"],
        ", ".join(f"{k}={v}" for k, v in audit["flags"].items() if v),
        audit["kept"],
        out,
    )
    return out


def run(cfg: ReflectConfig) -> int:
    out = reflect(cfg)
    audit = (out / "audit.json").read_text()
    print(f"reflections: {out / 'reflections.jsonl'}\naudit: {audit}")
    return 0
