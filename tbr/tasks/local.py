"""`custom_dataset` loaders for the tbr_* lm-eval tasks: our data folder's files → the HF schema.

lm-eval calls these with the task's `dataset_kwargs` plus the run's metadata (which also carries the
model args), hence the `**_`. The data folder comes from metadata `data_dir` (tbr passes it; on
lm-eval's CLI use `--metadata '{"data_dir": "..."}'`) or the TBR_DATA_DIR environment variable.

Every row is checked so a broken file fails here, naming file and line, instead of deep inside lm-eval.
The folder layouts are documented in each data folder's README (see also docs/results.md).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from tbr.errors import DataError
from tbr.io import read_jsonl_numbered

MMLU_TEST = "mmlu/test/{subject}_test.csv"
MMLU_DEV = "mmlu/dev/{subject}_dev.csv"
GSM8K_TEST = "gsm8k/test.jsonl"
ARC_EASY_TEST = "arc-easy/ARC-Easy-Test.jsonl"
MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: explicit argument, else TBR_DATA_DIR; a clear error when neither is usable."""
    raw = str(data_dir) if data_dir else os.environ.get("TBR_DATA_DIR", "").strip()
    if not raw:
        raise DataError(
            "the tbr_* lm-eval tasks read a local data folder: pass --data-dir to `tbr general`, or set "
            'TBR_DATA_DIR, or give lm-eval `--metadata \'{"data_dir": "/path/to/data"}\'`'
        )
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist or is not a directory")
    return root


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"{what}: missing file {path}; the data folder must hold the layout described in its "
            "README (mmlu/{test,dev}/<subject>_{test,dev}.csv, gsm8k/test.jsonl, "
            "arc-easy/ARC-Easy-Test.jsonl)"
        )
    return path


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = list(read_jsonl_numbered(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_mmlu_csv(path: Path, subject: str) -> list[dict[str, Any]]:
    """`question,choice0..choice3,answer` (0-based index) → cais/mmlu's {question, subject, choices, answer}."""
    out = []
    # newline="" and the csv module: questions contain quoted commas and newlines.
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != MMLU_COLUMNS:
            raise DataError(f"{path}:1: expected header {','.join(MMLU_COLUMNS)}, got {header}")
        for row in reader:
            line = reader.line_num
            if len(row) != 6:
                raise DataError(f"{path}:{line}: expected 6 columns, got {len(row)}")
            if row[5] not in ("0", "1", "2", "3"):
                raise DataError(f"{path}:{line}: answer must be a 0-based index 0-3, got {row[5]!r}")
            # Choices stay strings ("0", "4", ...): pandas-style type guessing would turn them into ints.
            out.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": int(row[5])})
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def read_gsm8k(path: Path) -> list[dict[str, Any]]:
    out = []
    for line, row in _jsonl(path):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{path}:{line}: field {key!r} missing or not a string")
        if "#### " not in row["answer"]:
            raise DataError(f"{path}:{line}: answer has no final '#### <number>' line")
        out.append({"question": row["question"], "answer": row["answer"]})
    return out


def read_arc(path: Path) -> list[dict[str, Any]]:
    """Official ARC jsonl (question.stem, question.choices[{text,label}]) → allenai/ai2_arc's schema."""
    out = []
    for line, row in _jsonl(path):
        q = row.get("question")
        if not isinstance(q, dict) or not isinstance(q.get("stem"), str):
            raise DataError(f"{path}:{line}: expected question.stem (official ARC schema)")
        choices = q.get("choices")
        if not isinstance(choices, list) or not all(
            isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("label"), str)
            for c in choices
        ):
            raise DataError(f"{path}:{line}: question.choices must be a list of {{text, label}}")
        labels = [c["label"] for c in choices]
        if row.get("answerKey") not in labels:
            raise DataError(f"{path}:{line}: answerKey {row.get('answerKey')!r} is not one of {labels}")
        out.append(
            {
                "id": str(row.get("id", line)),
                "question": q["stem"],
                "choices": {"text": [c["text"] for c in choices], "label": labels},
                "answerKey": row["answerKey"],
            }
        )
    return out


def _dataset(splits: dict[str, list[dict[str, Any]]]) -> Any:
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# ----------------------------------------------------------------------------- lm-eval entry points


def load_mmlu(subject: str, data_dir: str | None = None, **_: Any) -> Any:
    root = data_root(data_dir)
    test = _need(root / MMLU_TEST.format(subject=subject), f"MMLU {subject} test split")
    dev = _need(root / MMLU_DEV.format(subject=subject), f"MMLU {subject} dev split (few-shot exemplars)")
    return _dataset({"test": read_mmlu_csv(test, subject), "dev": read_mmlu_csv(dev, subject)})


def load_gsm8k(data_dir: str | None = None, **_: Any) -> Any:
    return _dataset({"test": read_gsm8k(_need(data_root(data_dir) / GSM8K_TEST, "GSM8K test split"))})


def load_arc_easy(data_dir: str | None = None, **_: Any) -> Any:
    return _dataset({"test": read_arc(_need(data_root(data_dir) / ARC_EASY_TEST, "ARC-Easy test split"))})


def files(task: str, data_dir: str | os.PathLike) -> list[Path]:
    """The data files a user-facing task name reads, for manifest hashes and up-front checks."""
    root = Path(data_dir)
    if task == "mmlu":
        return [
            root / pattern.format(subject=s) for s in mmlu_subjects() for pattern in (MMLU_TEST, MMLU_DEV)
        ]
    return [root / {"gsm8k": GSM8K_TEST, "arc_easy": ARC_EASY_TEST}[task]]


def mmlu_subjects() -> list[str]:
    """The 57 subjects, read from our shipped subject configs (tbr/tasks/mmlu/tbr_mmlu_<subject>.yaml)."""
    d = Path(__file__).resolve().parent / "mmlu"
    return sorted(p.stem.removeprefix("tbr_mmlu_") for p in d.glob("tbr_mmlu_*.yaml"))
