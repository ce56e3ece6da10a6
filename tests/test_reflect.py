"""Reflection generation: prompts, splitting, audit flags, and real runs (SmolLM2 + a real server)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tbr.audit import AUDIT_FLAGS, audit_reflection
from tbr.config import build as build_config
from tbr.errors import ConfigError
from tbr.prompts import EXTERNAL_REFLECTION_PROMPT, INTERNAL_REFLECTION_FEWSHOT, STANDARD_REFUSAL
from tbr.reflect import (
    INTERNAL_STOP,
    ReflectConfig,
    external_prompt,
    first_line,
    first_line_sentence,
    internal_prompt,
    reflect,
    split_external,
)

QUERY = "How can I steal a car from a parking lot?"
CLEAN = "This query asks for ways to steal a car from a parking lot, which is illegal and harmful."


# --------------------------------------------------------------------------- prompts


def test_internal_prompt_is_figure_8_verbatim():
    p = internal_prompt(QUERY)
    assert p == INTERNAL_REFLECTION_FEWSHOT.replace("{input}", QUERY)
    assert p.endswith(f"Instruction: {QUERY}\nExplain:")
    # a multi-line instruction is folded onto the single Instruction: line
    assert internal_prompt("line one\nline two").endswith("Instruction: line one line two\nExplain:")


def test_external_prompt_is_figure_9_verbatim():
    p = external_prompt(QUERY, STANDARD_REFUSAL)
    assert p == EXTERNAL_REFLECTION_PROMPT.replace("{instruction}", QUERY).replace(
        "{output}", STANDARD_REFUSAL
    )
    assert p.endswith(f"instruction: {QUERY}\noutput: {STANDARD_REFUSAL}\nrevised output:")


def test_internal_stop_does_not_stop_at_newline():
    assert "\n" not in INTERNAL_STOP


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\n This query asks for X.\nInstruction", "This query asks for X."),
        ("This query asks for X.", "This query asks for X."),
        ("  \n\n", ""),
        ("First line.\nSecond line.", "First line."),
    ],
)
def test_first_line_rule(raw, expected):
    assert first_line(raw) == expected


# --------------------------------------------------------------------------- external split

REFL = "Stealing cars is illegal and harms the owner."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "This query asks for a game, typically for kids. The response should include rules.",
            "This query asks for a game, typically for kids.",
        ),
        (
            "This query asks for a method, focusing on the victim.Human: How?\n\nAssistant: ok",
            "This query asks for a method, focusing on the victim.",
        ),
        (
            "\nThis query asks for the U.S. Army's address, e.g. its street. More.",
            "This query asks for the U.S. Army's address, e.g. its street.",
        ),
        ("This query asks for a list.\nInstruction: next", "This query asks for a list."),
        (
            "This query asks for a list of tools that never ends",
            "This query asks for a list of tools that never ends",
        ),
    ],
)
def test_first_sentence_rule(raw, expected):
    assert first_line_sentence(raw) == expected


def test_split_exact_and_connector():
    s = split_external(f"{REFL} Therefore, {STANDARD_REFUSAL}", STANDARD_REFUSAL)
    assert (s.reflection, s.method, s.connector) == (REFL, "exact", "Therefore,")
    assert s.refusal_found.startswith("I'm sorry, but I cannot fulfill")


def test_split_variant_refusal_case_and_punctuation():
    out = f"revised output: {REFL} So, i'm sorry but I cannot  fulfil... no: I'M SORRY, BUT I CANNOT FULFILL THAT REQUEST! bye"
    s = split_external(out, STANDARD_REFUSAL)
    assert s.method == "first-sentence-normalized"
    assert s.reflection is not None and s.reflection.startswith(REFL)
    assert s.refusal_found.startswith("I'M SORRY, BUT I CANNOT FULFILL")


def test_split_connector_without_period_gets_one():
    s = split_external(f"{REFL[:-1]}, therefore {STANDARD_REFUSAL}", STANDARD_REFUSAL)
    assert s.reflection == REFL and s.connector == "therefore"


def test_split_refusal_missing():
    s = split_external("Here is a poem about cars.", STANDARD_REFUSAL)
    assert s.reflection is None and s.method == "refusal-not-found"


def test_split_refusal_only_gives_empty_reflection():
    s = split_external(STANDARD_REFUSAL, STANDARD_REFUSAL)
    assert s.reflection == "" and s.method == "exact"
    assert audit_reflection(s.reflection, QUERY) == ["empty"]


# --------------------------------------------------------------------------- audit

POSITIVES = {
    "empty": "  ",
    "truncated": "This query asks for ways to steal a car from a parking lot, typically by",
    "too_long": "This query asks for ways to steal a car from a parking lot " + "and more " * 30 + ".",
    "compliance": "This query asks how to steal a car. Step 1: find an unlocked car in the lot.",
    "off_topic": "This query asks for a simple, engaging game designed for pre-school children.",
    "copies_example": "This query asks how to steal a car, likely focusing on the shock to the body and breath.",
    "refusal_phrase": "This query asks how to steal a car from a parking lot, and I cannot help with that.",
}


def test_clean_reflection_has_no_flags():
    assert audit_reflection(CLEAN, QUERY) == []


@pytest.mark.parametrize("flag", AUDIT_FLAGS)
def test_each_flag_fires_on_its_positive(flag):
    assert flag in audit_reflection(POSITIVES[flag], QUERY)


@pytest.mark.parametrize(
    "text",
    [
        "This query asks how to steal a car. Here's how: pick the lock.",
        "This query asks to steal a car from a lot.\n1. Pick the lock\n2. Start the engine.",
        "This query about stealing a car from a parking lot: first, you pick the lock.",
        "This query asks to steal a car from a lot. Take a slim jim and open the door.",
        "This query asks for car theft code: ```python\nunlock()```.",
    ],
)
def test_compliance_variants(text):
    assert "compliance" in audit_reflection(text, QUERY)


def test_copies_example_ignores_the_shared_opener():
    assert "copies_example" not in audit_reflection("This query asks for a description of car theft.", QUERY)
    pets = "Addressing issues with cars can be challenging, but it's important to handle them safely and legally."
    assert "copies_example" in audit_reflection(pets, QUERY)


def test_audit_thresholds_are_configurable():
    long = POSITIVES["too_long"]
    assert "too_long" not in audit_reflection(long, QUERY, max_words=500)
    assert "off_topic" in audit_reflection(CLEAN, QUERY, min_overlap=1.01)


# --------------------------------------------------------------------------- config


def test_config_errors():
    with pytest.raises(ConfigError, match="n must be positive"):
        build_config(ReflectConfig, {"n": 0})
    with pytest.raises(ConfigError, match="is not one of"):
        build_config(ReflectConfig, {"source": "gpt4"})
    with pytest.raises(ConfigError, match="refusal text is empty"):
        build_config(ReflectConfig, {"refusal": " "})
    with pytest.raises(ConfigError, match="is not one of"):
        build_config(ReflectConfig, {"prompt": "figure10"})
    with pytest.raises(ConfigError, match="extract applies to Figure 8"):
        build_config(
            ReflectConfig, {"source": "external", "extract": "first-sentence", "api_base": "http://x/v1"}
        )
    assert ReflectConfig(source="internal").new_tokens == 64
    assert ReflectConfig(source="external").new_tokens == 160
    # `prompt` picks the figure for either source; the token budget follows the figure
    assert ReflectConfig(source="external", prompt="figure8").new_tokens == 64
    assert ReflectConfig(source="internal", prompt="figure9").figure == "figure9"


def test_llm_categorizer_needs_endpoint(tmp_path):
    cfg = ReflectConfig(safety_source="demo-safety", categorizer="llm", n=2, out=str(tmp_path))
    with pytest.raises(ConfigError, match="category-api-base"):
        reflect(cfg)


# --------------------------------------------------------------------------- real runs


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drop_last_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))


@pytest.mark.slow
def test_internal_reflections_with_smollm2(tmp_path, caplog):
    cfg = ReflectConfig(
        source="internal",
        safety_source="demo-safety",
        n=3,
        max_new_tokens=40,
        batch_size=3,
        # fp32: bf16 greedy decoding is not batch-invariant (the resumed item runs in a batch of one
        # and may come back different), and this test checks that resume redoes only what was lost
        dtype="fp32",
        out=str(tmp_path),
    )
    reflect(cfg)
    rows = _rows(tmp_path / "reflections.jsonl")
    assert len(rows) == 3
    assert len({r["category"] for r in rows}) == 3  # stratified: three different categories
    for r in rows:
        assert r["reflection"].strip() and "\n" not in r["reflection"]
        assert r["reflection"] == first_line(r["raw"])
        assert r["kept"] == (not r["flags"])  # audit=drop
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    dec = manifest["decoding"]
    assert dec["stop"] == ["Instruction:"] and dec["temperature"] == 0.0 and dec["max_new_tokens"] == 40
    assert dec["format"] == "raw" and manifest["extraction_rule"].startswith("stop at 'Instruction:'")
    assert manifest["models"][0]["weights_hash"]
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["n"] == 3 and audit["kept"] == sum(r["kept"] for r in rows)
    assert audit["flagged"] == sum(1 for r in rows if r["flags"])

    # Resume: a lost last generation is the only one redone, and greedy decoding gives it back unchanged.
    _drop_last_line(tmp_path / "generations.jsonl")
    caplog.set_level(logging.INFO, logger="tbr.generate.cache")
    reflect(cfg)
    assert "2/3 items already done, generating 1" in caplog.text
    assert _rows(tmp_path / "reflections.jsonl") == rows
    assert len(_rows(tmp_path / "generations.jsonl")) == 3


@pytest.mark.slow
def test_external_reflections_against_real_server(openai_server, tmp_path, caplog):
    """Mechanics of the Figure 9 path with the tiny SmolLM2 server standing in for GPT-4."""
    cfg = ReflectConfig(
        source="external",
        safety_source="demo-safety",
        n=3,
        api_base=openai_server.base_url,
        api_model=openai_server.model,
        max_new_tokens=96,
        max_concurrency=1,
        out=str(tmp_path),
    )
    reflect(cfg)
    gens = _rows(tmp_path / "generations.jsonl")
    rows = _rows(tmp_path / "reflections.jsonl")
    assert len(gens) == len(rows) == 3
    assert {g["backend"] for g in gens} == {"openai"}
    for r, g in zip(rows, sorted(gens, key=lambda g: [x["id"] for x in rows].index(g["id"])), strict=True):
        assert r["raw"] == g["response"]
        assert r["split"] in ("exact", "first-sentence-normalized", "refusal-not-found")
        if r["split"] == "refusal-not-found":
            assert r["reflection"] is None and r["flags"] == ["split_failed"] and not r["kept"]
        else:
            assert r["reflection"] == split_external(r["raw"], STANDARD_REFUSAL).reflection
            assert r["flags"] == audit_reflection(r["reflection"], r["instruction"])
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert sum(audit["split_methods"].values()) == 3
    assert audit["flags"]["split_failed"] == audit["split_methods"].get("refusal-not-found", 0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"][0]["endpoint"] == openai_server.base_url
    assert manifest["decoding"]["format"] == "chat" and manifest["decoding"]["backend"] == "openai"

    # Resume after losing a row, then re-audit with --audit keep without generating anything new.
    _drop_last_line(tmp_path / "generations.jsonl")
    caplog.set_level(logging.INFO, logger="tbr.generate.cache")
    reflect(cfg)
    assert "2/3 items already done, generating 1" in caplog.text
    caplog.clear()
    reflect(ReflectConfig(**{**cfg.__dict__, "audit": "keep"}))
    assert "3/3 items already done" in caplog.text
    kept = _rows(tmp_path / "reflections.jsonl")
    assert [r["kept"] for r in kept] == [bool(r["reflection"]) for r in kept]


@pytest.mark.slow
def test_figure_8_on_an_external_server(openai_server, tmp_path):
    """prompt: figure8 sends the internal five-shot prompt to the endpoint as a raw completion, and its
    answer is split by the internal rule (first line), not searched for a refusal."""
    cfg = ReflectConfig(
        source="external",
        prompt="figure8",
        safety_source="demo-safety",
        n=2,
        api_base=openai_server.base_url,
        api_model=openai_server.model,
        max_concurrency=1,
        out=str(tmp_path),
    )
    reflect(cfg)
    gens = _rows(tmp_path / "generations.jsonl")
    rows = {r["id"]: r for r in _rows(tmp_path / "reflections.jsonl")}
    assert len(gens) == len(rows) == 2
    for g in gens:
        assert g["format"] == "raw" and g["backend"] == "openai"
        assert g["messages"][0]["content"].startswith(INTERNAL_REFLECTION_FEWSHOT.split("{input}")[0])
        r = rows[g["id"]]
        assert r["raw"] == g["response"] and r["reflection"] == first_line(g["response"])
        assert "split" not in r  # no refusal search: the answer holds only the reflection
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["prompt"].startswith("Figure 8") and manifest["extraction_rule"].startswith("stop at")
    assert manifest["decoding"]["stop"] == INTERNAL_STOP and manifest["decoding"]["max_new_tokens"] == 64
    assert manifest["config"]["source"] == "external" and manifest["config"]["prompt"] == "figure8"
