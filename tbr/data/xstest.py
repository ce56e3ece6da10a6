"""XSTest (Röttger et al., NAACL 2024): 250 safe prompts that over-cautious models refuse, 200 unsafe contrasts.

Local file `xstest/xstest_prompts.csv` (columns id, prompt, type, label, focus, note), else HF `Paul/XSTest`.
Ids are `xstest-<id>` in every suite, so results for `xstest-safe` and `xstest` join on the same id.
"""

from __future__ import annotations

from pathlib import Path

from tbr.errors import DataError

from .readers import check_unique, read_csv, read_hub, require_file
from .schema import LABELS, LoadReport, PromptRecord

FILE = "xstest/xstest_prompts.csv"
HUB = "Paul/XSTest"


def load(
    suite: str, data_dir: Path | None, report: LoadReport, labels: tuple[str, ...] = LABELS
) -> list[PromptRecord]:
    """All XSTest prompts whose label is in `labels`; the others are counted as skipped."""
    if data_dir is not None:
        path = require_file(data_dir, FILE, "XSTest", f"or unset the data dir to load {HUB} from the Hub")
        rows = read_csv(path, ("id", "prompt", "type", "label"), report)
    else:
        rows = read_hub("XSTest", HUB, split="train", required=("prompt", "type", "label"), report=report)
    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for row in rows:
        label = row.text("label")
        if label not in LABELS:
            raise DataError(f"{row.where}: label must be one of {LABELS}, got {label!r}")
        # The Hub copy may lack `id`; upstream ids are 1..450 in file order, so the row number matches.
        record_id = f"xstest-{row.text('id', required=False).strip() or row.index}"
        check_unique(seen, record_id, row)
        if label not in labels:
            report.skip(f"label {label}, not in {suite}")
            continue
        meta = {k: row.text(k, required=False) for k in ("focus", "note")}
        records.append(PromptRecord(record_id, row.text("prompt"), label, row.text("type"), suite, meta))
    return records
