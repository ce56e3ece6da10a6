"""Harmful-request benchmarks: every prompt should be refused, so every record has label "unsafe".

Each loader reads the shared-folder file when a data dir is given, else the Hub copy named in
the data folder's `README.md` (`$TBR_DATA_DIR/README.md`); the two differ only in column names, mapped here.
"""

from __future__ import annotations

from pathlib import Path

from tbr.errors import DataError

from .readers import Row, check_unique, read_csv, read_hub, read_lines, require_file
from .schema import LoadReport, PromptRecord

MALICIOUS_INSTRUCT = "malicious-instruct/malicious_instruct.txt"
ADVBENCH = "advbench/harmful_behaviors.csv"
HARMBENCH = "harmbench/harmbench_behaviors_text_all.csv"
STRONGREJECT = "strongreject/strongreject_dataset.csv"
JAILBREAKBENCH = "jailbreakbench/jbb_behaviors_harmful.csv"


def _hint(hub: str) -> str:
    return f"or unset the data dir to load {hub} from the Hub"


def load_malicious_instruct(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    """MaliciousInstruct (Huang et al., 2023): 100 questions, one per line; id `malicious-instruct-<line>`."""
    hub = "walledai/MaliciousInstruct"
    if data_dir is not None:
        path = require_file(data_dir, MALICIOUS_INSTRUCT, "MaliciousInstruct", _hint(hub))
        rows, column = read_lines(path, report), "text"
    else:
        rows = read_hub("MaliciousInstruct", hub, split="train", required=("prompt",), report=report)
        column = "prompt"
    return [PromptRecord(f"{suite}-{row.index}", row.text(column), "unsafe", "", suite) for row in rows]


def load_advbench(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    """AdvBench harmful behaviors (Zou et al., 2023): 520 goals; the GCG target string goes to meta."""
    hub = "walledai/AdvBench"
    if data_dir is not None:
        path = require_file(data_dir, ADVBENCH, "AdvBench", _hint(hub))
        rows, column = read_csv(path, ("goal", "target"), report), "goal"
    else:
        rows = read_hub("AdvBench", hub, split="train", required=("prompt",), report=report)
        column = "prompt"
    return [
        PromptRecord(
            f"{suite}-{row.index}",
            row.text(column),
            "unsafe",
            "",
            suite,
            {"target": row.text("target", required=False)},
        )
        for row in rows
    ]


def load_harmbench(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    """HarmBench text behaviors (Mazeika et al., 2024): the 200 standard + 100 contextual behaviors.

    Choice: we read `harmbench_behaviors_text_all.csv` (val + test, 400 rows) and keep the `standard` and
    `contextual` behaviors, because refusal is the right answer to both. The 100 `copyright` behaviors
    are skipped and counted: HarmBench scores them by hashing the output against the protected text,
    not by refusal, so they do not fit a refuse/comply metric. A contextual prompt is built exactly as
    HarmBench's own baselines do, `f"{context}\\n\\n---\\n\\n{behavior}"`; the bare behavior and the
    context are kept in meta for the judge. `type` is the SemanticCategory.

    Ids are `harmbench-<BehaviorID>` from the local CSV. The Hub copy (`walledai/HarmBench`, configs
    `standard` and `contextual`) has no BehaviorID, so there the ids are `harmbench-<config>-<row>`.
    """
    hub = "walledai/HarmBench"
    if data_dir is None:
        return [
            _harmbench_record(
                f"{suite}-{config}-{row.index}", suite, row, config, "prompt", "category", "context"
            )
            for config in ("standard", "contextual")
            for row in read_hub(
                f"HarmBench {config}",
                hub,
                config=config,
                split="train",
                required=("prompt", "category"),
                report=report,
            )
        ]
    columns = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID")
    rows = read_csv(require_file(data_dir, HARMBENCH, "HarmBench", _hint(hub)), columns, report)
    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for row in rows:
        kind = row.text("FunctionalCategory")
        record_id = f"{suite}-{row.text('BehaviorID')}"
        check_unique(seen, record_id, row)
        if kind == "copyright":
            report.skip("copyright behavior, scored by hash not refusal")
            continue
        if kind not in ("standard", "contextual"):
            raise DataError(f"{row.where}: unknown FunctionalCategory {kind!r}")
        records.append(
            _harmbench_record(record_id, suite, row, kind, "Behavior", "SemanticCategory", "ContextString")
        )
    return records


def _harmbench_record(
    record_id: str, suite: str, row: Row, kind: str, behavior_col: str, category_col: str, context_col: str
) -> PromptRecord:
    behavior = row.text(behavior_col)
    context = row.text(context_col, required=kind == "contextual")
    prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
    meta = {"functional_category": kind, "behavior": behavior, "context": context}
    return PromptRecord(record_id, prompt, "unsafe", row.text(category_col, required=False), suite, meta)


def load_strongreject(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    """StrongREJECT (Souly et al., 2024): 313 forbidden prompts; type = category, meta.source = origin."""
    hub = "walledai/StrongREJECT"
    if data_dir is not None:
        path = require_file(data_dir, STRONGREJECT, "StrongREJECT", _hint(hub))
        rows, column = read_csv(path, ("category", "source", "forbidden_prompt"), report), "forbidden_prompt"
    else:
        rows = read_hub("StrongREJECT", hub, split="train", required=("prompt", "category"), report=report)
        column = "prompt"
    return [
        PromptRecord(
            f"{suite}-{row.index}",
            row.text(column),
            "unsafe",
            row.text("category", required=False),
            suite,
            {"source": row.text("source", required=False)},
        )
        for row in rows
    ]


def load_jailbreakbench(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    """JailbreakBench JBB-Behaviors, harmful split (100): Goal is the prompt, Category the type.

    The local CSV's unnamed first column is a 0-based index while the Hub's `Index` is 1-based, so ids
    use the 1-based row number, `jailbreakbench-<n>`, which equals the Hub's Index for both origins.
    """
    hub = "JailbreakBench/JBB-Behaviors"
    columns = ("Goal", "Target", "Behavior", "Category", "Source")
    if data_dir is not None:
        rows = read_csv(require_file(data_dir, JAILBREAKBENCH, "JailbreakBench", _hint(hub)), columns, report)
    else:
        rows = read_hub(
            "JailbreakBench", hub, config="behaviors", split="harmful", required=columns, report=report
        )
    return [
        PromptRecord(
            f"{suite}-{row.index}",
            row.text("Goal"),
            "unsafe",
            row.text("Category", required=False),
            suite,
            {k.lower(): row.text(k, required=False) for k in ("Behavior", "Target", "Source")},
        )
        for row in rows
    ]
