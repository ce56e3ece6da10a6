from __future__ import annotations

from pathlib import Path

import pytest

from tbr.data.readers import JsonDoc, Row, read_csv, read_jsonl_rows, read_lines, read_text
from tbr.data.schema import LoadReport
from tbr.errors import DataError


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_read_text_reports_bad_utf8_with_line_and_byte_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.txt", b"fine\nab\xffc\n")
    with pytest.raises(DataError, match=r"bad\.txt:2:3: not valid UTF-8"):
        read_text(path)


def test_read_text_drops_a_byte_order_mark(tmp_path: Path) -> None:
    assert read_text(_write(tmp_path, "bom.csv", "\ufeffa,b\n")) == "a,b\n"


def test_csv_rows_carry_start_line_index_and_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", 'prompt,category\n"two\nlines",x\n\nthird,y\n')
    report = LoadReport("t")
    rows = read_csv(path, ("prompt",), report)
    assert [(r.where, r.index, r.values["prompt"]) for r in rows] == [
        (f"{path}:2", 1, "two\nlines"),
        (f"{path}:5", 2, "third"),  # the multi-line record and the blank line 4 are counted correctly
    ]
    assert (report.read, report.skipped, report.origin) == (3, {"blank line": 1}, str(path))


def test_csv_error_inside_a_multiline_record_names_where_it_started(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", 'prompt,category\nok,x\n"never closed,y\nmore\n')
    with pytest.raises(DataError, match=r"t\.csv:4: malformed CSV in the record starting on line 3"):
        read_csv(path, ("prompt",), LoadReport("t"))


def test_csv_header_only_and_empty_file(tmp_path: Path) -> None:
    assert read_csv(_write(tmp_path, "h.csv", "prompt\n"), ("prompt",), LoadReport("t")) == []
    with pytest.raises(DataError, match=r"e\.csv:1: empty file"):
        read_csv(_write(tmp_path, "e.csv", ""), ("prompt",), LoadReport("t"))


def test_read_lines_uses_line_numbers_and_handles_crlf(tmp_path: Path) -> None:
    path = _write(tmp_path, "q.txt", "first\r\n\r\nthird\r\n")
    report = LoadReport("q")
    rows = read_lines(path, report)
    assert [(r.index, r.values["text"]) for r in rows] == [(1, "first"), (3, "third")]
    assert (report.read, report.skipped) == (3, {"blank line": 1})


def test_jsonl_rows_keep_true_line_numbers_across_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.jsonl", '{"a": 1}\n\n\n{"a": 2}\n')
    report = LoadReport("r")
    rows = read_jsonl_rows(path, report)
    assert [(r.where, r.values["a"]) for r in rows] == [(f"{path}:1", 1), (f"{path}:4", 2)]
    assert (report.read, report.skipped) == (4, {"blank line": 2})


def test_json_doc_locates_nested_values(tmp_path: Path) -> None:
    # Strings containing brackets, commas and escaped quotes must not confuse the locator.
    text = '{\n  "note": "a [tricky], \\"value\\"",\n  "items": [\n    "x",\n      {"k": [1, 2]}\n  ]\n}\n'
    doc = JsonDoc(_write(tmp_path, "d.json", text))
    assert doc.data["items"][1] == {"k": [1, 2]}
    assert doc.where() == f"{doc.path}:1:1"
    assert doc.where("items") == f"{doc.path}:3:12"
    assert doc.where("items", 0) == f"{doc.path}:4:5"
    assert doc.where("items", 1, "k", 1) == f"{doc.path}:5:17"
    assert doc.where("missing").endswith("at ['missing']")  # unknown paths degrade, never crash


def test_json_doc_reports_malformed_json_with_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.json", '[\n  {"a": 1},\n  {"a": 2,}\n]')
    with pytest.raises(DataError, match=r"bad\.json:3:11: malformed JSON"):
        JsonDoc(path)


def test_row_text_is_verbatim_and_checks_presence_type_and_blankness() -> None:
    row = Row(
        "f.csv:3", 1, {"p": "  padded ", "n": 7, "blank": "  ", "bad": ["x"]}, ("p", "n", "blank", "bad")
    )
    assert row.text("p") == "  padded "
    assert row.text("n") == "7"
    assert row.text("absent", required=False) == ""
    with pytest.raises(DataError, match=r"^f\.csv:3: column 3 \('blank'\) is empty$"):
        row.text("blank")
    with pytest.raises(DataError, match=r"^f\.csv:3: 'absent' is missing$"):
        row.text("absent")
    with pytest.raises(DataError, match=r"column 4 \('bad'\) must be text, got list"):
        row.text("bad")
