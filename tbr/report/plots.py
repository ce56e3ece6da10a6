"""The report's figures (matplotlib, no display): each function writes one PNG and returns its path,
or None when the data for that figure is absent.

We draw on `matplotlib.figure.Figure` directly rather than through pyplot: no global state, no GUI
backend, and the module stays cheap to import because matplotlib is imported inside the functions.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tbr.report.arms import TRADEOFF_X, TRADEOFF_Y
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
        if v.sweep:
            continue  # the safety_ns arms belong to the trade-off figure
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


PAPER_FIG4 = Path(__file__).resolve().parent.parent / "assets" / "paper_fig4.json"


def _line(ax: Any, pts: list[tuple[float, Cell]], **kw: Any) -> None:
    """A curve through the points with their 95% intervals: error bars, and a shaded band where a point
    is a mean over seeds (its bootstrap interval over seeds and prompts)."""
    if not pts:
        return
    xs = [x for x, _ in pts]
    ys = [c.value for _, c in pts]
    errs = [[_err(c)[0] for _, c in pts], [_err(c)[1] for _, c in pts]]
    ax.errorbar(xs, ys, yerr=errs, capsize=2, lw=1.4, **kw)
    if any((c.seeds or 1) > 1 for _, c in pts):
        lo = [c.lo if c.lo is not None else c.value for _, c in pts]
        hi = [c.hi if c.hi is not None else c.value for _, c in pts]
        ax.fill_between(xs, lo, hi, color=kw.get("color"), alpha=0.18, lw=0)


def _paper_panel(ax: Any) -> None:
    """The paper's Figure 4 curves (read from its raster), for reference beside ours."""
    import json

    ref = json.loads(PAPER_FIG4.read_text(encoding="utf-8"))
    styles = {"xstest-safe": ("#55a868", "-"), "xstest-unsafe": ("#c44e52", "--"), "mmlu": ("#4c72b0", ":")}
    for (model, series), marker in zip(ref["models"].items(), "os^", strict=False):
        for key, (color, ls) in styles.items():
            ax.plot(ref["gammas"], series[key], color=color, ls=ls, marker=marker, ms=3.5, lw=1.0, alpha=0.8)
        ax.plot([], [], "k", marker=marker, ls="none", ms=4, label=model)
    ax.set_title("paper Fig. 4 (reference; XS-S —, XS-H --, MMLU ··)", fontsize=8)
    ax.legend(fontsize=6, loc="center right")


def gamma_curves(
    variants: list[Variant], safe: str | None, unsafe: str | None, path: Path, judge: str | None = None
) -> Path | None:
    """Figure 4: safe CR, unsafe CR and MMLU against γ, one panel per (base model, reflection source,
    format), and the paper's curves in a last panel. Several seeds: their mean with a seed band.

    The γ=0 baseline (no reflection, source "none") belongs to every source's curve; the safety_ns
    arms are the trade-off figure's. Drawn only when some curve has at least two γ values.
    """
    from tbr.report import arms as A

    all_arms = [a for a in A.arms(variants) if a.first.sweep is None]
    curves: dict[tuple[str, str, str], dict[float, A.Arm]] = defaultdict(dict)
    for a in all_arms:
        if a.gamma is not None and a.source in ("internal", "external"):
            curves[(a.group, a.source, a.first.reflection_format or "")].setdefault(a.gamma, a)
    for a in all_arms:
        if a.source == "none":
            for (group, _, _), pts in curves.items():
                if group == a.group:
                    pts.setdefault(0.0 if a.gamma is None else a.gamma, a)
    curves = {k: pts for k, pts in curves.items() if len(pts) >= 2}
    if not curves:
        return None
    keys = sorted(curves, key=lambda k: (k[0], SOURCE_ORDER.get(k[1], 9), k[2]))
    fig = _figure(max(4.2, 3.6 * (len(keys) + 1)), 3.6)
    axes = fig.subplots(1, len(keys) + 1, squeeze=False, sharey=True)[0]
    lines = [
        (f"{safe} CR ↑", lambda a: A.rate(a, safe, judge) if safe else None, "#55a868", "o"),
        (f"{unsafe} CR ↓", lambda a: A.rate(a, unsafe, judge) if unsafe else None, "#c44e52", "s"),
        ("MMLU acc", lambda a: A.metric(a, "mmlu", "acc,none"), "#4c72b0", "^"),
    ]
    for ax, key in zip(axes, keys, strict=False):
        pts = sorted(curves[key].items())
        for label, get, color, marker in lines:
            cells = [(g, c) for g, a in pts if (c := get(a)) is not None]
            _line(ax, cells, label=label, color=color, marker=marker)
        seeds = max(a.seeds for _, a in pts)
        fmt = f", {key[2]}" if key[2] else ""
        band = f"; {seeds} seeds, 95% band" if seeds > 1 else ""
        ax.set_title(f"{key[0]} — {SOURCE_LABEL.get(key[1], key[1])} reflection{fmt}{band}", fontsize=8)
    _paper_panel(axes[-1])
    for ax in axes:
        ax.set_xlabel("γ (share of safety samples with reflection)")
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rate")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="outside lower center", ncols=3)
    fig.savefig(path)
    return path


# Trade-off axes: (suite, short name); x = how often harmful prompts are answered, y = safe ones.


def tradeoff(variants: list[Variant], path: Path, judge: str | None = None) -> Path | None:
    """Safe compliance against unsafe compliance for w/o models trained on more or less safety data
    (a curve: `safety_ns`) and the TBR arms (points), one panel per (unsafe, safe) suite pair. A TBR
    point above the w/o curve is a better trade-off, not a move along it. Drawn when the w/o family has
    at least two safety counts."""
    from tbr.report import arms as A

    all_arms = A.arms(variants)
    have = {s for v in variants for s in v.suites()}
    panels = [(x, y) for y in TRADEOFF_Y for x in TRADEOFF_X if x[0] in have and y[0] in have]
    groups = list(dict.fromkeys(a.group for a in all_arms))
    wo = {g: sorted((a for a in all_arms if a.group == g and a.source == "none" and a.safety_n), key=lambda a: a.safety_n or 0) for g in groups}  # fmt: skip
    if not panels or not any(len({a.safety_n for a in w}) >= 2 for w in wo.values()):
        return None
    fig = _figure(4.6 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    markers = {g: "osD^vPX*"[i % 8] for i, g in enumerate(groups)}

    def point(ax: Any, a: A.Arm, xs: str, ys: str, color: str, marker: str, label: str | None) -> None:
        cx, cy = A.rate(a, xs, judge), A.rate(a, ys, judge)
        if cx is None or cy is None:
            return
        xl, xh = _err(cx)
        yl, yh = _err(cy)
        ax.errorbar(cx.value, cy.value, xerr=[[xl], [xh]], yerr=[[yl], [yh]], fmt=marker, color=color,
                    capsize=2, ms=6, label=label)  # fmt: skip

    for ax, ((xs, xn), (ys, yn)) in zip(axes, panels, strict=True):
        for g in groups:
            curve = [(A.rate(a, xs, judge), A.rate(a, ys, judge), a) for a in wo[g]]
            curve = [(cx, cy, a) for cx, cy, a in curve if cx is not None and cy is not None]
            if curve:
                ax.plot(
                    [c[0].value for c in curve],
                    [c[1].value for c in curve],
                    "-",
                    color=SOURCE_COLOR["none"],
                    lw=1,
                )
                for cx, cy, a in curve:
                    ax.annotate(
                        f"n={a.safety_n}",
                        (cx.value, cy.value),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            for a in wo[g]:
                point(ax, a, xs, ys, SOURCE_COLOR["none"], markers[g], None)
            for a in all_arms:
                if a.group != g or a.source not in ("base", "internal", "external"):
                    continue
                if a.source != "base" and a.gamma != max(
                    b.gamma or 0 for b in all_arms if b.group == g and b.source == a.source
                ):
                    continue  # the TBR point is the arm with the most reflection (γ=1)
                color = SOURCE_COLOR.get(a.source or "", "#8172b3")
                point(ax, a, xs, ys, color, markers[g], f"{a.name}" + (f" ({g})" if len(groups) > 1 else ""))
        ax.plot([], [], "-", marker="o", color=SOURCE_COLOR["none"], label="w/o, by safety samples n")
        ax.set_xlabel(f"{xn} compliance ({xs}) ← safer")
        ax.set_ylabel(f"{yn} compliance ({ys}) ↑ fewer false refusals")
        ax.set_xlim(-0.02, None)
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("safety / over-refusal trade-off (95% intervals; seed means where several)", fontsize=9)
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
