import json

import pytest

from tbr.errors import DataError
from tbr.io import JsonlAppender, read_jsonl, read_jsonl_tolerant, stable_hash


def test_read_jsonl_reports_file_line_column(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2,, }\n')
    with pytest.raises(DataError, match=r"x.jsonl:3:9: malformed JSON"):
        list(read_jsonl(f))
    f.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"x.jsonl:2:1: expected a JSON object"):
        list(read_jsonl(f))


def test_appender_repairs_torn_tail_and_tolerant_reader(tmp_path):
    f = tmp_path / "w.jsonl"
    with JsonlAppender(f) as out:
        out.write({"k": 1})
        out.write({"k": 2})
    with f.open("a") as fh:  # what a kill mid-write leaves behind
        fh.write('{"k": 3, "resp')
    rows, torn = read_jsonl_tolerant(f)
    assert [r["k"] for r in rows] == [1, 2] and torn == 1
    with JsonlAppender(f) as out:
        out.write({"k": 3})
    assert [json.loads(x)["k"] for x in f.read_text().splitlines()] == [1, 2, 3]


def test_tolerant_reader_still_rejects_corruption_in_the_middle(tmp_path):
    f = tmp_path / "w.jsonl"
    f.write_text('{"k": 1}\nnot json\n{"k": 3}\n')
    with pytest.raises(DataError, match=r"w.jsonl:2:"):
        read_jsonl_tolerant(f)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
