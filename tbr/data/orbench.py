"""OR-Bench (Cui et al., 2024): over-refusal prompts (`or-bench-hard-1k`, label safe) and toxic ones (unsafe).

The shared data folder has no copy. Put the Hub CSVs (columns `prompt,category`) at
`<data dir>/or-bench/or-bench-hard-1k.csv` and `<data dir>/or-bench/or-bench-toxic.csv`, or load them
from HF `bench-llm/or-bench` (configs `or-bench-hard-1k` / `or-bench-toxic`, split `train`).
Ids are `<suite>-<row number>`, the same for both origins because the CSVs are the Hub's own files.
"""

from __future__ import annotations

from pathlib import Path

from .readers import read_csv, read_hub, require_file
from .schema import LoadReport, PromptRecord

HUB = "bench-llm/or-bench"
# suite -> (local file, Hub config, label)
SETS = {
    "or-bench-hard": ("or-bench/or-bench-hard-1k.csv", "or-bench-hard-1k", "safe"),
    "or-bench-toxic": ("or-bench/or-bench-toxic.csv", "or-bench-toxic", "unsafe"),
}


def load(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    relpath, config, label = SETS[suite]
    columns = ("prompt", "category")
    if data_dir is not None:
        hint = (
            f"OR-Bench is not in the shared data folder: download {config}.csv from the HF dataset {HUB}, "
            f"or unset the data dir to load it from the Hub"
        )
        rows = read_csv(require_file(data_dir, relpath, f"OR-Bench {config}", hint), columns, report)
    else:
        rows = read_hub(
            f"OR-Bench {config}", HUB, config=config, split="train", required=columns, report=report
        )
    return [
        PromptRecord(
            f"{suite}-{row.index}", row.text("prompt"), label, row.text("category", required=False), suite
        )
        for row in rows
    ]
