"""Helpers for the broken-input tests: overwrite one file of a data dir, then check the error's location."""

from __future__ import annotations

from pathlib import Path

import pytest

from tbr.data import load_instructions, load_prompts
from tbr.errors import DataError


def break_file(data_dir: Path, relpath: str, content: str | bytes) -> Path:
    path = data_dir / relpath
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def load_any(name: str, data_dir: Path) -> list:
    return load_instructions(name, data_dir) if name in _INSTRUCTION_NAMES else load_prompts(name, data_dir)


_INSTRUCTION_NAMES = {"stl-safety", "hh-rlhf", "alpaca-demo", "alpaca-tiny"}


def assert_broken(
    name: str, data_dir: Path, relpath: str, content: str | bytes, location: str, message: str
) -> None:
    """Loading `name` after writing `content` to `relpath` fails at `file:location` with `message`.

    `location` is "line" or "line:col"; the trailing ": " in the check stops line 3 matching line 30.
    """
    path = break_file(data_dir, relpath, content)
    with pytest.raises(DataError) as info:
        load_any(name, data_dir)
    text = str(info.value)
    assert f"{path}:{location}: " in text, text
    assert message in text, text
