"""The report's figures (matplotlib, no display): each function writes one PNG and returns its path,
or None when the data for that figure is absent.

We draw on `matplotlib.figure.Figure` directly rather than through pyplot: no global state, no GUI
backend, and the module stays cheap to import because matplotlib is imported inside the functions.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tbr.report.collect import SOURCE_ORDER, Cell, Variant, sort_key

SOURCE_LABEL = {"base": "base", "none": "w/o", "internal": "Int", "external": "Ext"}
SOURCE_COLOR = {"base": "#b0b0b0", "none": "#4c72b0", "internal": "#dd8452", "external": "#55a868"}
_OTHER_COLORS = ["#8172b3", "#c44e52", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


def series_label(v: Variant) -> str:
    """What a bar or point is called in a legend: the reflection source, else the variant name."""
    if v.source in SOURCE_LABEL:
        g = f" γ={v.gamma:g}" if v.gamma is not None and v.gamma not in (0.0, 1.0) else ""
        return SOURCE_LABEL[v.source] + g
    return v.name


def _colors(labels: list[str], variants: list[Variant]) -> dict[str, str]:
    by_label = {series_label(v): v for v in variants}
    out, k = {}, 0
    for lab in labels:
        src = by_label[lab].source
        if src in SOURCE_COLOR and (by_label[lab].gamma in (None, 0.0, 1.0)):
            out[lab] = SOURCE_COLOR[src]
        else:
            out[lab] = _OTHER_COLORS[k % len(_OTHER_COLORS)]
            k += 1
    return out


def _err(c: Cell) -> tuple[float, float]:
    """Asymmetric error-bar lengths (Wilson intervals are not symmetric)."""
    if c.lo is None or c.hi is None:
        return 0.0, 0.0
    return max(0.0, c.value - c.lo), max(0.0, c.hi - c.value)


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    return fig


def _bar_variants(variants: list[Variant]) -> list[Variant]:
    """Figure 3 compares w/o with full reflection: intermediate γ values belong to the γ curves."""
    keep = []
    for v in variants:
        if v.gamma is None or v.gamma in (0.0, 1.0):
            keep.append(v)
            continue
        peers = [u for u in variants if u.group == v.group and u.source == v.source and u.gamma is not None]
        if v.gamma == max(u.gamma for u in peers if u.gamma is not None) and not any(
            u.gamma == 1.0 for u in peers
        ):
            keep.append(v)  # a sweep that stops short of 1: its top γ stands in for "full"
    return keep


def bars(variants: list[Variant], suite: str, path: Path, judge: str | None = None) -> Path | None:
    """Figure 3: compliance on the safe suite per variant, grouped by base model, coloured by source."""
    rows = [(v, v.rate(suite, judge)) for v in sorted(_bar_variants(variants), key=sort_key)]
    rows = [(v, c) for v, c in rows if c is not None]
    if not rows:
        return None
    groups = list(dict.fromkeys(v.group for v, _ in rows))
    labels = list(dict.fromkeys(series_label(v) for v, _ in rows))
    colors = _colors(labels, [v for v, _ in rows])
    # Each group is as wide as its own bars: a bare eval dir should not reserve room for w/o/Int/Ext.
    per_group = {g: [(v, c) for v, c in rows if v.group == g] for g in groups}
    width = 0.8 / max(len(b) for b in per_group.values())
    fig = _figure(max(6.0, 1.5 + len(rows) * 0.75), 3.8)
    ax = fig.add_subplot()
    for gi, g in enumerate(groups):
        members = per_group[g]
        for k, (v, c) in enumerate(members):
            lab = series_label(v)
            x = gi + (k - (len(members) - 1) / 2) * width
            lo, hi = _err(c)
            ax.bar(x, c.value, width * 0.92, color=colors[lab], yerr=[[lo], [hi]], capsize=2, ecolor="#333")
            ax.text(x, c.value + hi + 0.015, f"{c.value:.2f}", ha="center", va="bottom", fontsize=7)
    for lab in labels:
        ax.bar(0, 0, 0, color=colors[lab], label=lab)  # legend handles, one per series
    tilt = len(groups) > 1 and sum(len(g) for g in groups) > 40
    ax.set_xticks(range(len(groups)), groups, rotation=15 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(f"compliance rate on {suite} ↑")
    ax.set_title(f"{suite}: compliance per variant (95% intervals)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(fontsize=8, ncols=min(len(labels), 5), loc="outside lower center")
    fig.savefig(path)
    return path


def gamma_curves(
    variants: list[Variant], safe: str | None, unsafe: str | None, path: Path, judge: str | None = None
) -> Path | None:
    """Figure 4: safe CR, unsafe CR and MMLU against γ, one panel per (base model, reflection source).

    The γ=0 baseline (no reflection, source "none") belongs to every source's curve. Drawn only
    when some curve has at least two γ values.
    """
    curves: dict[tuple[str, str], dict[float, Variant]] = defaultdict(dict)
    for v in variants:
        if v.gamma is not None and v.source in ("internal", "external"):
            curves[(v.group, v.source)][v.gamma] = v
    for v in variants:
        if v.source == "none":
            for (group, _), pts in curves.items():
                if group == v.group:
                    pts.setdefault(0.0 if v.gamma is None else v.gamma, v)
    curves = {k: pts for k, pts in curves.items() if len(pts) >= 2}
    if not curves:
        return None
    keys = sorted(curves, key=lambda k: (k[0], SOURCE_ORDER.get(k[1], 9)))
    fig = _figure(max(4.2, 3.6 * len(keys)), 3.6)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    lines = [
        (f"{safe} CR ↑", lambda v: v.rate(safe, judge) if safe else None, "#55a868", "o"),
        (f"{unsafe} CR ↓", lambda v: v.rate(unsafe, judge) if unsafe else None, "#c44e52", "s"),
        ("MMLU acc", lambda v: v.metric("mmlu", "acc,none"), "#4c72b0", "^"),
    ]
    for ax, key in zip(axes, keys, strict=True):
        pts = sorted(curves[key].items())
        for label, get, color, marker in lines:
            xs, ys, errs = [], [], [[], []]
            for g, v in pts:
                c = get(v)
                if c is not None:
                    xs.append(g)
                    ys.append(c.value)
                    lo, hi = _err(c)
                    errs[0].append(lo)
                    errs[1].append(hi)
            if xs:
                ax.errorbar(xs, ys, yerr=errs, label=label, color=color, marker=marker, capsize=2, lw=1.4)
        ax.set_title(f"{key[0]} — {SOURCE_LABEL.get(key[1], key[1])} reflection", fontsize=9)
        ax.set_xlabel("γ (share of safety samples with reflection)")
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rate")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="outside lower center", ncols=3)
    fig.savefig(path)
    return path


def scatter(
    variants: list[Variant], safe: str | None, unsafe: str | None, path: Path, judge: str | None = None
) -> Path | None:
    """Over-refusal vs safety, one point per variant (OR-Bench's chart): right and down is better."""
    if not safe or not unsafe:
        return None
    pts = [(v, v.rate(safe, judge), v.rate(unsafe, judge)) for v in sorted(variants, key=sort_key)]
    pts = [(v, x, y) for v, x, y in pts if x is not None and y is not None]
    if not pts:
        return None
    labels = list(dict.fromkeys(series_label(v) for v, _, _ in pts))
    colors = _colors(labels, [v for v, _, _ in pts])
    # Colour = reflection source, marker = base model: names as annotations would overlap.
    groups = list(dict.fromkeys(v.group for v, _, _ in pts))
    markers = {g: "osD^vPX*"[i % 8] for i, g in enumerate(groups)}
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    for v, x, y in pts:
        xl, xh = _err(x)
        yl, yh = _err(y)
        ax.errorbar(
            x.value,
            y.value,
            xerr=[[xl], [xh]],
            yerr=[[yl], [yh]],
            fmt=markers[v.group],
            color=colors[series_label(v)],
            capsize=2,
            ms=6,
            alpha=0.9,
        )
    for lab in labels:
        ax.plot([], [], "o", color=colors[lab], label=lab)
    if len(groups) > 1:
        for g in groups:
            ax.plot([], [], markers[g], color="#555", mfc="none", label=g)
    his = [y.hi if y.hi is not None else y.value for _, _, y in pts]
    los = [x.lo if x.lo is not None else x.value for _, x, _ in pts]
    ax.set_xlim(max(0.0, min(los) - 0.1) - 0.02, 1.02)
    ax.set_ylim(-0.02, min(1.05, max(0.3, max(his) + 0.1)))
    ax.set_xlabel(f"{safe} compliance rate → better (fewer false refusals)")
    ax.set_ylabel(f"{unsafe} compliance rate ↓ better (safer)")
    ax.set_title("safe vs unsafe compliance (95% intervals)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path)
    return path
