"""tbr.stats.bootstrap on synthetic data with a known truth: the interval covers it, pairing narrows a
difference of correlated arms, and judge errors (NaN) are left out rather than counted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tbr.stats import bootstrap, seed_rates, spread


def _arm(rng: np.random.Generator, p_prompt: np.ndarray, seeds: int, seed_sd: float) -> np.ndarray:
    """0/1 answers of `seeds` training runs to the same prompts: each prompt has its own difficulty,
    each run shifts every prompt by the same amount (its seed effect)."""
    shift = rng.uniform(-seed_sd, seed_sd, (seeds, 1))
    return (rng.random((seeds, len(p_prompt))) < p_prompt[None] + shift).astype(float)


def test_the_interval_covers_the_truth() -> None:
    # Prompt difficulties uniform on [0.2, 0.6] and seed shifts uniform on [-0.1, 0.1]: the population
    # rate is exactly 0.4. A 95% interval over seeds and prompts should cover it ~95% of the time.
    rng = np.random.default_rng(0)
    covered, reps = 0, 60
    for r in range(reps):
        x = _arm(rng, rng.uniform(0.2, 0.6, 120), seeds=3, seed_sd=0.1)
        est, lo, hi = bootstrap([x], draws=1000, seed=r)
        assert lo <= est <= hi and est == pytest.approx(x.mean())
        covered += lo <= 0.4 <= hi
    assert covered / reps >= 0.85


def test_it_is_seeded_and_uses_enough_draws() -> None:
    x = _arm(np.random.default_rng(1), np.full(50, 0.5), seeds=3, seed_sd=0.05)
    assert bootstrap([x]) == bootstrap([x])
    assert bootstrap([x], seed=1) != bootstrap([x], seed=2)


def test_a_paired_difference_is_narrower_than_an_unpaired_one() -> None:
    # Two arms on the same prompts: the prompt's difficulty drives both, TBR adds 0.1 everywhere.
    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.8, 200)
    u = rng.random((3, 200))  # the same uniform per (seed, prompt): strongly correlated answers
    a = (u < p + 0.1).astype(float)
    b = (u < p).astype(float)
    est, lo, hi = bootstrap([a, b], [1.0, -1.0], paired=True, draws=1000)
    _, ulo, uhi = bootstrap([a, b], [1.0, -1.0], paired=False, draws=1000)
    assert est == pytest.approx(a.mean() - b.mean())
    assert lo <= 0.1 <= hi and ulo <= 0.1 <= uhi
    # the prompts' shared difficulty cancels in the paired difference; unpaired it counts twice
    assert (hi - lo) < 0.6 * (uhi - ulo)


def test_judge_errors_are_left_out() -> None:
    x = np.array([[1, 0, math.nan, 1], [0, 0, 1, math.nan]])
    assert seed_rates(x) == pytest.approx([2 / 3, 1 / 3])
    est, lo, hi = bootstrap([x], draws=500)
    assert est == pytest.approx(0.5) and 0 <= lo <= hi <= 1
    assert bootstrap([np.full((2, 3), math.nan)]) is None
    assert spread([0.2, 0.4]) == pytest.approx(math.sqrt(0.02)) and spread([0.3]) is None
    with pytest.raises(ValueError, match="same prompts"):
        bootstrap([np.ones((1, 3)), np.ones((1, 4))], [1.0, -1.0])
