"""tbr's confidence intervals: Wilson's score interval for one proportion (one seed), and a seeded
bootstrap over seeds and prompts for an arm trained with several seeds and for paired arm differences."""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for k successes out of n; None when n == 0 (no rate, no interval).

    Unlike p ± z·se it stays inside [0, 1] and is sane at p = 0 or 1 (0/30 gives [0, 0.11]).
    """
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# ----------------------------------------------------------------------------- across seeds
#
# With several seeds per arm, a rate's uncertainty has two sources: which prompts the suite happens to
# hold, and which training run (safety sample, γ selection, data order) the seed happened to give.
# Every seed of every arm answers the same prompts, so prompts and seeds are *crossed*, not nested: one
# draw resamples the seeds, then one set of prompt indices that every drawn seed is read at. Drawing
# prompts afresh per seed would treat a hard prompt as k independent prompts and narrow the interval.

DRAWS = 2000  # ≥ 1000 for a stable 95% percentile interval; the report's number, fixed for reproducibility
_CHUNK = 250  # draws gathered at once: (chunk, seeds, prompts) floats stay a few MB


def seed_rates(scores: Any) -> list[float]:
    """Each seed's rate: the mean of its judged prompts (NaN = not judged, e.g. a judge error)."""
    import numpy as np

    x = np.asarray(scores, dtype=float)
    return [float(np.nanmean(row)) if np.isfinite(row).any() else math.nan for row in x]


def spread(values: list[float]) -> float | None:
    """The across-seed standard deviation (n − 1); None for fewer than two seeds."""
    xs = [v for v in values if math.isfinite(v)]
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((v - m) ** 2 for v in xs) / (len(xs) - 1))


def bootstrap(
    arms: list[Any],
    weights: list[float] | None = None,
    *,
    paired: bool = True,
    draws: int = DRAWS,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float] | None:
    """(estimate, lo, hi) of Σ wᵢ · (mean over seeds of arm i's rate), by a seeded percentile bootstrap.

    Each arm is a (seeds × prompts) array of 0/1 scores, NaN where a prompt was not judged. The default
    weights give one arm's mean ([1]) or a difference of two ([1, −1]). `paired`: the arms answered the
    same prompts (columns line up), so one draw uses the same prompt indices for every arm, and, when
    the arms have as many seeds, the same seed indices (seed s of two arms shares its safety sample).
    Unpaired, every arm is resampled on its own. None when some arm has no judged score.
    """
    import warnings

    import numpy as np

    xs = [np.atleast_2d(np.asarray(a, dtype=float)) for a in arms]
    w = np.asarray(weights if weights is not None else [1.0] * len(xs), dtype=float)
    if len(w) != len(xs) or not xs:
        raise ValueError("bootstrap: one weight per arm")
    if paired and len({x.shape[1] for x in xs}) > 1:
        raise ValueError("bootstrap: paired arms need the same prompts (columns)")
    if any(x.size == 0 or not np.isfinite(x).any() for x in xs):
        return None

    mean = np.nanmean if any(np.isnan(x).any() for x in xs) else np.mean  # mean is twice as fast

    def stat(parts: list[Any]) -> Any:  # parts: (draws, seeds, prompts) per arm -> (draws,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample is a NaN draw
            return sum(wi * mean(mean(p, axis=2), axis=1) for wi, p in zip(w, parts, strict=True))

    estimate = float(stat([x[None] for x in xs])[0])
    rng = np.random.default_rng(seed)
    same_seeds = paired and len({x.shape[0] for x in xs}) == 1
    out = []
    for start in range(0, draws, _CHUNK):
        m = min(_CHUNK, draws - start)
        parts = []
        shared_p = rng.integers(0, xs[0].shape[1], (m, xs[0].shape[1])) if paired else None
        shared_s = rng.integers(0, xs[0].shape[0], (m, xs[0].shape[0])) if same_seeds else None
        for x in xs:
            k, n = x.shape
            s = shared_s if shared_s is not None else rng.integers(0, k, (m, k))
            p = shared_p if shared_p is not None else rng.integers(0, n, (m, n))
            parts.append(x[s[:, :, None], p[:, None, :]])
        out.append(stat(parts))
    values = np.concatenate(out)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return estimate, float(lo), float(hi)
