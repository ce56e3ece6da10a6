from __future__ import annotations

import json
from pathlib import Path

import pytest

from tbr.data import load_instructions, load_instructions_with_report
from tbr.data.schema import InstructionRecord
from tbr.errors import DataError

from .conftest import FIXTURES
from .helpers import assert_broken

# --- real data -------------------------------------------------------------------------------------


def test_real_hh_rlhf_first_turns_deduplicated(shared_data: Path) -> None:
    records, report = load_instructions_with_report("hh-rlhf", shared_data)
    assert (report.read, report.kept, report.skipped) == (2312, 2178, {"duplicate first Human turn": 134})
    assert len({r.instruction for r in records}) == 2178
    assert records[0] == InstructionRecord("what are some pranks with a pen i can do?", source="hh-rlhf")
    assert not any("Assistant:" in r.instruction or "Human:" in r.instruction for r in records)


@pytest.mark.parametrize(
    ("source", "count", "with_input"), [("alpaca-demo", 999, 412), ("alpaca-tiny", 100, 46)]
)
def test_real_alpaca_named_sets(shared_data: Path, source: str, count: int, with_input: int) -> None:
    records = load_instructions(source, shared_data)
    assert len(records) == count
    assert sum(1 for r in records if r.input) == with_input
    assert all(r.output and r.source == source for r in records)


# --- fixtures ---------------------------------------------------------------------------------------


def test_hh_rlhf_takes_only_the_first_human_turn(data_dir: Path) -> None:
    records, report = load_instructions_with_report("hh-rlhf", data_dir)
    assert [r.instruction for r in records] == [
        "How do I pick a lock?",
        "What's the best way to insult my boss?",
        "Can you help me write\na two-line threat?",
    ]
    assert all(r.output == "" and r.input == "" for r in records)
    assert report.skipped == {"duplicate first Human turn": 1}


def test_alpaca_jsonl_path_defaults_missing_input(tmp_path: Path) -> None:
    records, report = load_instructions_with_report(FIXTURES / "alpaca-format" / "small.jsonl")
    assert records == [
        InstructionRecord("Name a fruit that is yellow.", "", "A banana.", "", "small"),
        InstructionRecord("Add the numbers.", "2 and 3", "5", "math", "small"),
        InstructionRecord("Say hello.", "", "Hello!", "", "small"),
    ]
    assert report.skipped == {"blank line": 1}


def test_alpaca_json_list_and_jsonl_inside_a_json_file_read_alike(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Say hi.", "output": "Hi."},
        {"instruction": "Count to two.", "input": "", "output": "1 2"},
    ]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(rows, indent=2))
    as_lines = tmp_path / "lines.json"  # JSONL under a .json name, as some dumps are
    as_lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    expected = [("Say hi.", "", "Hi."), ("Count to two.", "", "1 2")]
    from_list, from_lines = load_instructions(str(as_list)), load_instructions(as_lines)
    assert [(r.instruction, r.input, r.output) for r in from_list] == expected
    assert [(r.instruction, r.input, r.output) for r in from_lines] == expected
    assert {r.source for r in from_list} == {"list"} and {r.source for r in from_lines} == {"lines"}


def test_missing_alpaca_path_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.json does not exist"):
        load_instructions(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("source", "relpath", "content", "location", "message"),
    [
        (
            "hh-rlhf",
            "hh-rlhf/harmless-base-test.jsonl",
            '{"chosen": "\\n\\nHuman: a"}\n{"chosen" "x"}\n',
            "2:11",
            "malformed JSON",
        ),
        (
            "hh-rlhf",
            "hh-rlhf/harmless-base-test.jsonl",
            '{"chosen": "\\n\\nHuman: a"}\n\n{"rejected": "x"}\n',
            "3",
            "'chosen' is missing",
        ),
        (
            "hh-rlhf",
            "hh-rlhf/harmless-base-test.jsonl",
            '{"chosen": "\\n\\nAssistant: hi"}\n',
            "1",
            "does not start with a 'Human:' turn",
        ),
        (
            "hh-rlhf",
            "hh-rlhf/harmless-base-test.jsonl",
            '{"chosen": "\\n\\nHuman:  \\n\\nAssistant: ?"}\n',
            "1",
            "turn of 'chosen' is empty",
        ),
        (
            "alpaca-demo",
            "alpaca/alpaca_en_demo.json",
            '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]',
            "3:22",
            "malformed JSON",
        ),
        (
            "alpaca-demo",
            "alpaca/alpaca_en_demo.json",
            '[\n {"instruction": ["a"], "output": "b"}\n]',
            "2:2",
            "item [0]: 'instruction' must be text",
        ),
        (
            "alpaca-tiny",
            "alpaca/alpaca_tiny_first100.json",
            '[\n {"input": "x", "output": "b"}\n]',
            "2:2",
            "item [0]: 'instruction' is missing",
        ),
        (
            "alpaca-tiny",
            "alpaca/alpaca_tiny_first100.json",
            '[{"instruction": "a", "output": "b"},\n "text"]',
            "2:2",
            "item [1]: expected an object, got str",
        ),
        (
            "alpaca-tiny",
            "alpaca/alpaca_tiny_first100.json",
            '{"instruction": "a", "output": ""}\n',
            "1",
            "'output' is empty",
        ),
    ],
)
def test_broken_instruction_files_are_located(
    data_dir: Path, source: str, relpath: str, content: str, location: str, message: str
) -> None:
    assert_broken(source, data_dir, relpath, content, location, message)


def test_broken_alpaca_jsonl_path_reports_true_line_after_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n')
    with pytest.raises(DataError, match=rf"^{path}:3: 'output' is missing$"):
        load_instructions(path)
