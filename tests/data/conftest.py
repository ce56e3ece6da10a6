"""Shared fixtures: the self-written mini data dir, the real shared data (if present), a fake Hub."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _find_shared_data() -> Path | None:
    # Read at import time, before the autouse fixture below clears TBR_DATA_DIR for each test.
    # The project's data folder sits beside the checkout (../shared/data), as the Makefile assumes.
    for candidate in (
        os.environ.get("TBR_DATA_DIR"),
        Path(__file__).resolve().parents[3] / "shared" / "data",
    ):
        if candidate and (Path(candidate) / "xstest" / "xstest_prompts.csv").is_file():
            return Path(candidate)
    return None


SHARED_DATA = _find_shared_data()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's TBR_DATA_DIR must not change which source a test reads."""
    monkeypatch.delenv("TBR_DATA_DIR", raising=False)


@pytest.fixture
def shared_data() -> Path:
    if SHARED_DATA is None:
        pytest.skip("real benchmark data not found: set TBR_DATA_DIR to a data folder (README.md, Data)")
    return SHARED_DATA


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture data dir, so a test can break one file without touching the repo."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "data"))


class FakeHub:
    """Stands in for `datasets`: serves registered tables and fails like the Hub for anything else."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
        self.calls: list[tuple[str, str | None, str, dict[str, Any]]] = []

    def add(
        self, path: str, rows: list[dict[str, Any]], *, name: str | None = None, split: str = "train"
    ) -> None:
        self.tables[(path, name, split)] = rows

    def load_dataset(
        self, path: str, name: str | None = None, *, split: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        self.calls.append((path, name, split, kwargs))
        if (path, name, split) not in self.tables:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (offline)")
        return self.tables[(path, name, split)]


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=hub.load_dataset))
    return hub
