"""Instruction sources: Alpaca-format files (JSON list or JSONL) and HH-RLHF red-team prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tbr.errors import DataError

from .readers import JsonDoc, Row, no_hub, read_hub, read_jsonl_rows, read_text, require_file
from .schema import InstructionRecord, LoadReport

ALPACA_DEMO = "alpaca/alpaca_en_demo.json"
ALPACA_TINY = "alpaca/alpaca_tiny_first100.json"
ALPACA_FULL = "alpaca/alpaca_data.json"  # the original 52k file; not in our data folder (use the Hub)
HH_RLHF = "hh-rlhf/harmless-base-test.jsonl"


def _is_jsonl(path: Path) -> bool:
    """JSONL if so named, or if the first non-blank line is a whole JSON object (a `.json` that is JSONL)."""
    if path.suffix == ".jsonl":
        return True
    first = next((line for line in read_text(path).split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False  # e.g. "[" or a pretty-printed object: let the JSON reader parse (and report) it


def _alpaca_rows(path: Path, report: LoadReport) -> list[Row]:
    if _is_jsonl(path):
        return read_jsonl_rows(path, report)
    report.origin = str(path)
    doc = JsonDoc(path)
    if not isinstance(doc.data, list):
        raise DataError(f"{doc.where()}: expected a JSON list of {{instruction, input, output}} objects")
    report.read += len(doc.data)
    rows = []
    for i, item in enumerate(doc.data):
        # Locations are computed lazily: a JSON list gives no line numbers until something is wrong.
        row = Row(lambda i=i: f"{doc.where(i)}: item [{i}]", i + 1, item if isinstance(item, dict) else {})
        if not isinstance(item, dict):
            raise DataError(f"{row.where}: expected an object, got {type(item).__name__}")
        rows.append(row)
    return rows


def read_alpaca(path: str | Path, source: str, report: LoadReport) -> list[InstructionRecord]:
    """Alpaca-format records from any file: `instruction` and `output` required, `input` optional ("").

    An empty `output` is an error too: these files are training targets, and an empty target would
    teach the model to say nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{source}: Alpaca-format file {path} does not exist")
    records = []
    for row in _alpaca_rows(path, report):
        instruction, output = row.text("instruction"), row.text("output")
        # Several Alpaca dumps write `"input": null` or leave it out for instruction-only rows.
        records.append(
            InstructionRecord(
                instruction,
                row.text("input", required=False),
                output,
                row.text("category", required=False),
                source,
            )
        )
    return records


def load_alpaca_named(source: str, data_dir: Path | None, report: LoadReport) -> list[InstructionRecord]:
    """`alpaca-demo` (LLaMA-Factory's 999-row demo), `alpaca-tiny` (the first 100 original Alpaca rows) or
    `alpaca` (all 52k original rows: tatsu-lab/alpaca, or alpaca/alpaca_data.json in a data dir)."""
    split = "train"
    if source == "alpaca-tiny":
        relpath, hub, split = ALPACA_TINY, "tatsu-lab/alpaca", "train[:100]"
    elif source == "alpaca":
        relpath, hub = ALPACA_FULL, "tatsu-lab/alpaca"
    else:
        relpath, hub = ALPACA_DEMO, None
    if data_dir is not None:
        hint = f"or unset the data dir to load {hub} from the Hub" if hub else ""
        return read_alpaca(require_file(data_dir, relpath, source, hint), source, report)
    if hub is None:
        raise no_hub(
            source, "it is published on GitHub only (hiyouga/LLaMA-Factory data/alpaca_en_demo.json)"
        )
    # The Hub's tatsu-lab/alpaca is the original alpaca_data.json, so its first 100 rows are alpaca-tiny.
    rows = read_hub(source, hub, split=split, required=("instruction", "output"), report=report)
    return [
        InstructionRecord(
            row.text("instruction"), row.text("input", required=False), row.text("output"), "", source
        )
        for row in rows
    ]


# The dialogue is "\n\nHuman: …\n\nAssistant: …"; the first Human turn ends at the next speaker tag.
_FIRST_HUMAN = re.compile(r"\s*Human:(.*?)(?:\n\nAssistant:|\n\nHuman:|\Z)", re.DOTALL)


def load_hh_rlhf(source: str, data_dir: Path | None, report: LoadReport) -> list[InstructionRecord]:
    """HH-RLHF harmless-base test: the first `Human:` turn of each `chosen` dialogue, de-duplicated.

    Many dialogues share their opening request (they differ in later turns), so repeats are dropped
    and counted in the report as duplicates. `output` is empty: these are prompts, not targets.
    """
    hub = "Anthropic/hh-rlhf"
    if data_dir is not None:
        path = require_file(data_dir, HH_RLHF, "HH-RLHF", f"or unset the data dir to load {hub} from the Hub")
        rows = read_jsonl_rows(path, report)
    else:
        rows = read_hub(
            "HH-RLHF harmless-base",
            hub,
            data_dir="harmless-base",
            split="test",
            required=("chosen",),
            report=report,
        )
    records, seen = [], set()
    for row in rows:
        match = _FIRST_HUMAN.match(row.text("chosen"))
        if match is None:
            raise DataError(f"{row.where}: 'chosen' does not start with a 'Human:' turn")
        turn = match.group(1).strip()
        if not turn:
            raise DataError(f"{row.where}: the first 'Human:' turn of 'chosen' is empty")
        if turn in seen:
            report.skip("duplicate first Human turn")
            continue
        seen.add(turn)
        records.append(InstructionRecord(turn, "", "", "", source))
    return records
