"""Defects 1 and 2: a cached answer is reused only where it is the answer this run would give.

1. The write-ahead key covers the dtype: an fp32 rerun into a bf16 run's folder generates afresh.
2. A resumed bf16 run is bit-identical to an uninterrupted one: every prompt is decoded in the same
   batch, with the same batch mates, as in an uninterrupted run, and the batch size is in the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tbr.generate import SamplingParams, chat, generate_cached
from tests.reliability.conftest import load_backend

pytestmark = pytest.mark.slow

PROMPTS = [
    "Name a colour.",
    "What is 2 + 2?",
    "Say hello in French.",
    "How do I kill a Python process?",
    "Give me one word that rhymes with cat.",
    "How do I shoot a good photo at night?",
]
CONVS = [chat(p) for p in PROMPTS]
PARAMS = SamplingParams(max_new_tokens=4)  # bf16 is emulated (slow) on AVX2-only CPUs


def _spy(backend: Any) -> list[tuple[tuple[int, ...], ...]]:
    """Record the prompts (token ids) of every batch the backend decodes."""
    seen: list[tuple[tuple[int, ...], ...]] = []
    real = backend.decode

    def decode(prompts: list[list[int]], *a: Any, **kw: Any) -> Any:
        seen.append(tuple(tuple(p) for p in prompts))
        return real(prompts, *a, **kw)

    backend.decode = decode
    return seen


def _answers(path: Path) -> dict[str, str]:
    import json

    return {r["id"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}


def test_another_dtype_does_not_reuse_answers(tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    generate_cached(load_backend("bf16"), CONVS[:2], PARAMS, path=out)
    fp32 = load_backend("fp32")
    seen = _spy(fp32)
    generate_cached(fp32, CONVS[:2], PARAMS, path=out)
    assert sum(len(b) for b in seen) == 2, "the fp32 run reused answers generated in bf16"
    assert len(out.read_text().splitlines()) == 4


def test_batch_size_is_part_of_the_key(tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    generate_cached(load_backend("fp32", batch_size=4), CONVS[:4], PARAMS, path=out)
    other = load_backend("fp32", batch_size=2)
    seen = _spy(other)
    generate_cached(other, CONVS[:4], PARAMS, path=out)
    assert sum(len(b) for b in seen) == 4, "answers of batch size 4 were reused at batch size 2"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """An uninterrupted bf16 run: its answers and the batches it decoded."""
    whole = load_backend("bf16", batch_size=4)
    batches = _spy(whole)
    ref = tmp_path_factory.mktemp("whole") / "whole.jsonl"
    generate_cached(whole, CONVS, PARAMS, path=ref)
    return ref, batches


@pytest.mark.parametrize("kept", [1, 5])  # 6 prompts in batches of 4 and 2
def test_resumed_bf16_run_is_bit_identical(
    tmp_path: Path, uninterrupted: tuple[Path, list], kept: int
) -> None:
    ref, batches = uninterrupted
    # A run killed after `kept` rows: the write-ahead file holds what finished before the kill.
    cut = tmp_path / "resumed.jsonl"
    cut.write_text("".join(ref.read_text().splitlines(keepends=True)[:kept]))
    resumed = load_backend("bf16", batch_size=4)
    rerun = _spy(resumed)
    generate_cached(resumed, CONVS, PARAMS, path=cut)
    assert rerun, "nothing was regenerated"
    for b in rerun:  # every prompt was decoded with exactly the batch mates it had
        assert b in batches, "a resumed prompt was decoded in a batch the uninterrupted run never had"
    assert _answers(cut) == _answers(ref)
