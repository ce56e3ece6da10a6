"""The one confidence interval tbr reports: Wilson's score interval for a proportion."""

from __future__ import annotations

import math

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
