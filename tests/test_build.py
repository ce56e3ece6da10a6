"""Training-set construction: γ counts and nesting, determinism, templates, datasets loading, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tbr.build import BuildConfig, build, n_reflected, show
from tbr.categories import CATEGORIES
from tbr.cli import main
from tbr.config import build as build_config
from tbr.data.safety import load_safety
from tbr.errors import ConfigError, DataError
from tbr.prompts import STANDARD_REFUSAL
from tbr.reflection import CLOSE_TAG, OPEN_TAG, join, split

N_SAFETY = 20  # of the 30 built-in demo safety prompts


@pytest.fixture(scope="module")
def refl_dir(tmp_path_factory) -> Path:
    """A reflections dir as `tbr reflect` writes it, with hand-written reflections for the demo prompts."""
    d = tmp_path_factory.mktemp("build_reflections")
    prompts, _, _ = load_safety("demo-safety", None)
    with (d / "reflections.jsonl").open("w") as f:
        for i, p in enumerate(prompts):
            row = {
                "id": p.id,
                "instruction": p.instruction,
                "input": p.input,
                "category": p.category,
                "source": p.source,
                "reflection": f"This query asks: {p.instruction.lower()} That would cause harm.",
                "refusal": STANDARD_REFUSAL,
                "flags": [] if i % 10 else ["compliance"],
                "kept": bool(i % 10),  # 3 of 30 dropped by the audit
            }
            f.write(json.dumps(row) + "\n")
    return d


def _build(tmp_path: Path, name: str, **kw) -> list[dict]:
    values = dict(general_source="demo", general_n=-1, safety_n=N_SAFETY, out=str(tmp_path / name)) | kw
    out = build(build_config(BuildConfig, values))
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


def _reflected(rows: list[dict]) -> set[str]:
    return {r["id"] for r in rows if r["has_reflection"]}


def test_gamma_counts_and_nesting(tmp_path, refl_dir):
    sets = {}
    for g in (0.0, 0.5, 1.0):
        rows = _build(tmp_path, f"g{g}", gamma=g, reflections=str(refl_dir))
        safety = [r for r in rows if r["kind"] == "safety"]
        assert len(safety) == N_SAFETY and sum(r["kind"] == "general" for r in rows) == 60
        assert len(_reflected(rows)) == n_reflected(g, N_SAFETY) == round(g * N_SAFETY)
        sets[g] = (_reflected(rows), {r["id"] for r in safety})
        manifest = json.loads((tmp_path / f"g{g}" / "manifest.json").read_text())
        assert manifest["counts"]["safety_with_reflection"] == len(sets[g][0])
        assert manifest["gamma"] == g
    assert sets[0.0][0] == set() and sets[1.0][0] == sets[1.0][1]
    assert sets[0.0][0] < sets[0.5][0] < sets[1.0][0]
    assert sets[0.0][1] == sets[0.5][1] == sets[1.0][1]  # same safety prompts at every gamma


def test_nesting_for_fine_gamma_steps(tmp_path, refl_dir):
    prev: set[str] = set()
    for g in (0.2, 0.4, 0.6, 0.8):
        cur = _reflected(_build(tmp_path, f"g{g}", gamma=g, reflections=str(refl_dir)))
        assert prev <= cur and len(cur) == n_reflected(g, N_SAFETY)
        prev = cur


def test_deterministic_by_seed(tmp_path, refl_dir):
    a = _build(tmp_path, "a", gamma=0.5, reflections=str(refl_dir), seed=3)
    b = _build(tmp_path, "b", gamma=0.5, reflections=str(refl_dir), seed=3)
    c = _build(tmp_path, "c", gamma=0.5, reflections=str(refl_dir), seed=4)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert a == b
    assert _reflected(a) != _reflected(c)
    assert [r["id"] for r in a] != [r["id"] for r in c]  # shuffled differently


def test_only_kept_reflections_are_used(tmp_path, refl_dir):
    rows = _build(tmp_path, "all", gamma=1.0, reflections=str(refl_dir), safety_n=-1)
    assert sum(r["kind"] == "safety" for r in rows) == 27
    assert all("That would cause harm." in r["reflection"] for r in rows if r["kind"] == "safety")


def test_targets_and_alpaca_template(tmp_path, refl_dir):
    rows = _build(tmp_path, "alp", gamma=0.5, reflections=str(refl_dir))
    refl = next(r for r in rows if r["has_reflection"])
    plain = next(r for r in rows if r["kind"] == "safety" and not r["has_reflection"])
    assert refl["completion"] == join(refl["reflection"], STANDARD_REFUSAL, "tagged")
    assert (
        refl["completion"].startswith(OPEN_TAG) and CLOSE_TAG + "\n" + STANDARD_REFUSAL in refl["completion"]
    )
    assert split(refl["completion"]).answer == STANDARD_REFUSAL
    assert plain["completion"] == plain["answer"] == STANDARD_REFUSAL and plain["reflection"] is None
    # Figure 10, with and without input, character for character.
    with_input = next(r for r in rows if r["kind"] == "general" and r["input"])
    assert with_input["prompt"] == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{with_input['instruction']}\n\n### Input:\n{with_input['input']}\n\n### Response:\n"
    )
    assert plain["prompt"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        f"request.\n\n### Instruction:\n{plain['instruction']}\n\n### Response:\n"
    )
    general = next(r for r in rows if r["kind"] == "general")
    assert general["completion"] == general["answer"] and not general["has_reflection"]


def test_plain_reflection_format(tmp_path, refl_dir):
    rows = _build(tmp_path, "plain", gamma=1.0, reflections=str(refl_dir), reflection_format="plain")
    r = next(r for r in rows if r["has_reflection"])
    assert r["completion"] == f"{r['reflection']}\n\n{STANDARD_REFUSAL}"
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["reflection_format"] == "plain" and manifest["template"] == "alpaca"


def test_prose_reflection_format_is_the_papers_untagged_target(tmp_path, refl_dir):
    from tbr.reflection import OPEN_TAG, split

    rows = _build(tmp_path, "prose", gamma=1.0, reflections=str(refl_dir), reflection_format="prose")
    r = next(r for r in rows if r["has_reflection"])
    # Fig. 9: "<reflection> Therefore, I'm sorry, but I cannot fulfill that request. …", no tag
    assert r["completion"] == f"{r['reflection']} Therefore, {STANDARD_REFUSAL}"
    assert OPEN_TAG not in r["completion"]
    s = split(r["completion"], "prose")  # what the judges see at evaluation
    assert (s.reflection, s.answer) == (r["reflection"], STANDARD_REFUSAL)
    assert json.loads((tmp_path / "prose" / "manifest.json").read_text())["reflection_format"] == "prose"


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_loads_in_datasets(tmp_path, refl_dir, template):
    import datasets

    rows = _build(tmp_path, template, gamma=0.5, reflections=str(refl_dir), template=template)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / template / "train.jsonl"), split="train")
    assert len(ds) == len(rows) == N_SAFETY + 60
    row = ds[0]
    if template == "chat":
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        with_input = next(r for r in rows if r["input"])
        assert with_input["prompt"][0]["content"] == f"{with_input['instruction']}\n\n{with_input['input']}"
        refl = next(r for r in rows if r["has_reflection"])
        assert refl["completion"][0]["content"] == join(refl["reflection"], STANDARD_REFUSAL)
    else:
        assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)
    assert set(ds["kind"]) == {"general", "safety"}


def test_gamma_zero_from_safety_source(tmp_path):
    rows = _build(tmp_path, "src", gamma=0.0, safety_source="demo-safety", safety_n=14)
    safety = [r for r in rows if r["kind"] == "safety"]
    assert len(safety) == 14 and not _reflected(rows)
    assert {r["category"] for r in safety} == set(CATEGORIES)  # stratified: 2 per category


def test_manifest_hashes(tmp_path, refl_dir):
    _build(tmp_path, "m", gamma=1.0, reflections=str(refl_dir))
    m = json.loads((tmp_path / "m" / "manifest.json").read_text())
    # paths relative to the run dir (or the package, for built-in assets), never absolute
    assert os.path.relpath(refl_dir / "reflections.jsonl", tmp_path / "m") in m["data"]
    assert "tbr/assets/demo_general.jsonl" in m["data"]
    assert m["seeds"] == {"seed": 0} and m["counts"]["general"] == 60
    assert sum(m["counts"]["safety_per_category"].values()) == N_SAFETY


def test_errors(tmp_path, refl_dir):
    with pytest.raises(ConfigError, match=r"gamma must be in \[0, 1\]"):
        build_config(BuildConfig, {"gamma": 1.2})
    with pytest.raises(ConfigError, match=r"gamma must be in \[0, 1\]"):
        build_config(BuildConfig, {"gamma": -0.1})
    with pytest.raises(ConfigError, match="needs --reflections"):
        build_config(BuildConfig, {"gamma": 0.5})
    with pytest.raises(DataError, match="has only 60"):
        _build(tmp_path, "e1", gamma=0.0, safety_source="demo-safety", safety_n=7, general_n=61)
    with pytest.raises(DataError, match="has only 27"):
        _build(tmp_path, "e2", gamma=1.0, reflections=str(refl_dir), safety_n=28)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        _build(tmp_path, "e3", gamma=0.0, safety_source="demo-safety", safety_n=7, general_source=str(empty))
    bad = tmp_path / "bad_refl"
    bad.mkdir()
    (bad / "reflections.jsonl").write_text(
        json.dumps({"id": "x", "instruction": "q", "reflection": "", "kept": False}) + "\n"
    )
    with pytest.raises(DataError, match="no usable reflections"):
        _build(tmp_path, "e4", gamma=1.0, reflections=str(bad))
    with pytest.raises(DataError, match="has no reflections.jsonl"):
        _build(tmp_path, "e5", gamma=1.0, reflections=str(tmp_path))


def test_cli_build_and_show(tmp_path, refl_dir, capsys):
    out = tmp_path / "cli"
    argv = ["build", "--gamma", "0.5", "--reflections", str(refl_dir), "--general-source", "demo"]
    argv += ["--general-n", "10", "--safety-n", "6", "--out", str(out), "--show", "3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "(safety + reflection [" in text and "(general)" in text and "--- completion" in text
    assert len(show(out / "train.jsonl", 5).split("=====")) == 6
    assert main(["build", "--gamma", "2", "--out", str(out)]) == 2


def test_general_sources_concatenate_from_a_comma_list(tmp_path):
    extra = tmp_path / "mine.jsonl"
    extra.write_text(
        "".join(json.dumps({"instruction": f"Say {w}.", "input": "", "output": w}) + "\n" for w in "abc")
    )
    rows = _build(tmp_path, "comma", gamma=0.0, safety_source="demo-safety", safety_n=5,
                  general_source=f"demo, {extra}")  # fmt: skip
    general = [r for r in rows if r["kind"] == "general"]
    assert len(general) == 63 and {r["source"] for r in general} == {"demo", "mine"}
    manifest = json.loads((tmp_path / "comma" / "manifest.json").read_text())
    assert any(path.endswith("mine.jsonl") for path in manifest["data"])
