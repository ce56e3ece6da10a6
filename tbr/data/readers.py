"""Format readers shared by all loaders: CSV, JSON, JSONL, plain text and the Hugging Face Hub.

Each reader turns its source into `Row`s that carry a location string (`file:line`, or the Hub row),
so the loaders can map columns to records without caring about the format, and every error they
raise still points at the offending line. Readers read the whole source before returning: a bad row
anywhere fails the load before any record reaches a caller, so no stage ever sees partial data.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.errors import DataError
from tbr.io import read_jsonl

from .schema import LoadReport

# Benchmark CSVs such as HarmBench's carry multi-paragraph context strings; the csv default
# (128 KiB per field) is enough today, but a larger limit costs nothing and avoids a confusing error.
csv.field_size_limit(16 * 1024 * 1024)


@dataclass(frozen=True)
class Row:
    """One source row: `where` locates it for error messages, `index` (1-based) feeds stable ids."""

    locate: str | Callable[[], str]  # a callable where the location is costly and only errors need it
    index: int
    values: Mapping[str, Any]
    columns: Sequence[str] = ()  # CSV header, so errors can give the column number as well

    @property
    def where(self) -> str:
        return self.locate if isinstance(self.locate, str) else self.locate()

    def _at(self, column: str) -> str:
        if column in self.columns:
            return f"{self.where}: column {list(self.columns).index(column) + 1} ({column!r})"
        return f"{self.where}: {column!r}"

    def text(self, column: str, *, required: bool = True) -> str:
        """The column's text, unchanged; required columns must be present and not blank."""
        value = self.values.get(column)
        if value is None:
            if required:
                raise DataError(f"{self._at(column)} is missing")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DataError(f"{self._at(column)} must be text, got {type(value).__name__}")
        text = str(value)  # kept verbatim: benchmark prompts are compared byte-for-byte with upstream
        if required and not text.strip():
            raise DataError(f"{self._at(column)} is empty")
        return text


def require_file(data_dir: Path, relpath: str, what: str, hint: str = "") -> Path:
    path = data_dir / relpath
    if not path.is_file():
        raise DataError(
            f"{what}: expected file {relpath} under data dir {data_dir}, but {path} does not exist"
            + (f"; {hint}" if hint else "")
        )
    return path


def no_hub(what: str, why: str) -> DataError:
    """The error for a set that must come from a local data dir because the Hub has no copy."""
    return DataError(
        f"no data dir given (--data-dir / TBR_DATA_DIR) and the Hugging Face Hub could not provide {what}: {why}"
    )


def check_unique(seen: dict[str, str], record_id: str, row: Row) -> None:
    """Ids taken from a data column must be unique, or results of two prompts would be merged."""
    if record_id in seen:
        raise DataError(f"{row.where}: duplicate id {record_id!r} (first seen at {seen[record_id]})")
    seen[record_id] = row.where


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a leading BOM dropped); a bad byte is reported as file:line:column."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}:{col}: not valid UTF-8 ({e.reason})") from None
    return text.removeprefix("\ufeff")


def read_csv(path: Path, required: Sequence[str], report: LoadReport) -> list[Row]:
    """Rows of a headed CSV. Blank lines are skipped and counted; any other irregularity is an error."""
    report.origin = str(path)
    text = read_text(path)
    # strict=True turns a stray or unclosed quote into csv.Error instead of silently merging rows.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}:1: empty file; expected a CSV header with columns {list(required)}")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}:1: missing required column(s) {missing}; the header has {header}")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:  # a repeated name would let one column silently overwrite the other
            raise DataError(f"{path}:1: repeated column name(s) {repeated} in the header")
        start = reader.line_num + 1
        for fields in reader:
            # A quoted field may span lines: name the record's first line, where a reader would look.
            line, start = start, reader.line_num + 1
            report.read += 1
            if not fields:
                report.skip("blank line")
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{path}:{line}: expected {len(header)} fields as in the header, got {len(fields)}"
                    " (an unquoted comma or a stray quote?)"
                )
            rows.append(Row(f"{path}:{line}", len(rows) + 1, dict(zip(header, fields, strict=True)), header))
    except csv.Error as e:
        where = f" in the record starting on line {start}" if start < reader.line_num else ""
        raise DataError(f"{path}:{reader.line_num}: malformed CSV{where}: {e}") from None
    return rows


def read_lines(path: Path, report: LoadReport) -> list[Row]:
    """One row per line of a text file (column "text"); blank lines are skipped and counted.

    `index` is the line number, so ids stay put when someone deletes a blank line above.
    """
    report.origin = str(path)
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    rows: list[Row] = []
    for lineno, line in enumerate(lines, 1):
        report.read += 1
        line = line.removesuffix("\r")
        if not line.strip():
            report.skip("blank line")
            continue
        rows.append(Row(f"{path}:{lineno}", lineno, {"text": line}))
    return rows


def read_jsonl_rows(path: Path, report: LoadReport) -> list[Row]:
    """Rows of a JSONL file via `tbr.io.read_jsonl` (which reports malformed lines as file:line:col)."""
    report.origin = str(path)
    text = read_text(path)
    # Iterate the same way read_jsonl does (universal newlines), so the line numbers agree with it.
    lines = list(io.StringIO(text, newline=None))
    linenos = [n for n, line in enumerate(lines, 1) if line.strip()]
    report.read += len(lines)
    report.skip("blank line", len(lines) - len(linenos))
    return [
        Row(f"{path}:{n}", i, values)
        for i, (n, values) in enumerate(zip(linenos, read_jsonl(path), strict=True), 1)
    ]


class JsonDoc:
    """A parsed JSON file that can still say on which line and column any value sits."""

    def __init__(self, path: Path):
        self.path = path
        self.text = read_text(path)
        try:
            self.data: Any = json.loads(self.text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None

    def where(self, *keys: str | int) -> str:
        """`file:line:col` of the value at `keys` (object keys / list indices), for error messages.

        Positions are only worked out when an error is raised, so a good file is parsed once.
        """
        try:
            pos = _skip_ws(self.text, 0)
            for key in keys:
                pos = _child_offset(self.text, pos, key)
        except (KeyError, IndexError, ValueError):
            return f"{self.path} at {''.join(f'[{k!r}]' for k in keys)}"
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"{self.path}:{line}:{col}"


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]  # the pattern matches the empty string


def _child_offset(text: str, pos: int, key: str | int) -> int:
    """Offset of the value at `key` in the (already validated) array or object starting at `pos`."""
    is_object = text[pos] == "{"
    close = "}" if is_object else "]"
    pos = _skip_ws(text, pos + 1)
    index = 0
    while text[pos] != close:
        name: str | int = index
        if is_object:
            name, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_ws(text, _skip_ws(text, pos) + 1)  # past the ':'
        if name == key:
            return pos
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        index += 1
    raise KeyError(key)


def read_hub(
    what: str,
    dataset: str,
    *,
    split: str,
    config: str | None = None,
    data_dir: str | None = None,
    required: Sequence[str] = (),
    report: LoadReport,
) -> list[Row]:
    """Rows of a Hugging Face dataset, used only when no local data dir is configured.

    Any failure (no `datasets` package, no network, a gated or renamed dataset) becomes one DataError
    that says both ways out: point at local files, or fix Hub access.
    """
    label = dataset + (f"/{config}" if config else "") + (f"/{data_dir}" if data_dir else "") + f"[{split}]"
    report.origin = f"hf:{label}"
    try:
        import datasets  # deferred: importing it costs seconds and only this path needs it

        kwargs = {"data_dir": data_dir} if data_dir else {}
        ds = datasets.load_dataset(dataset, config, split=split, **kwargs)
        records = [dict(r) for r in ds]
    except Exception as e:  # network, auth, gating and schema errors all mean "not available"
        raise no_hub(f"{what} ({label})", f"{type(e).__name__}: {e}") from e
    columns = list(getattr(ds, "column_names", None) or (records[0] if records else []))
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"hf:{label}: missing required column(s) {missing}; the dataset has {columns}")
    report.read += len(records)
    return [Row(f"hf:{label} row {i}", i, r) for i, r in enumerate(records, 1)]
