"""report.md: the tables as GitHub markdown plus the figures as PNG files beside it."""

from __future__ import annotations

from tbr.report.tables import Table, fmt


def _esc(text: str) -> str:
    # A pipe would split the cell and a newline would end the row.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table(t: Table) -> str:
    lines = [f"## {t.title}", ""]
    if t.note:
        lines += [t.note, ""]
    lines.append("| " + " | ".join(_esc(h) for h in t.header) + " |")
    lines.append("|" + "---|" * len(t.header))
    for row in t.rows:
        lines.append("| " + " | ".join(_esc(fmt(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


def render(title: str, meta: list[str], tables: list[Table], figures: list[tuple[str, str]]) -> str:
    """figures: (caption, file name relative to report.md)."""
    parts = [f"# {title}", "", *(f"- {m}" for m in meta), ""]
    parts.append(table(tables[0]))  # the variants
    parts.append(table(tables[1]))  # Table 3
    if figures:
        parts += ["## Figures", ""]
        for caption, name in figures:
            parts += [f"### {caption}", "", f"![{caption}]({name})", ""]
    parts += [table(t) for t in tables[2:]]
    parts.append(
        "The sample browser (false refusals, reflections, side-by-side comparison) is in report.html.\n"
    )
    return "\n".join(parts)
