"""The suite registry and the built-in demo suite (offline: no data dir, no Hub)."""

from __future__ import annotations

from collections import Counter

import pytest

from tbr import suites
from tbr.errors import DataError


def test_demo_suite_is_40_contrast_pairs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TBR_DATA_DIR", raising=False)
    safe, unsafe = suites.load("demo-safe"), suites.load("demo-unsafe")
    assert len(safe) == len(unsafe) == 40
    assert {r.label for r in safe} == {"safe"} and {r.label for r in unsafe} == {"unsafe"}
    # every pair has exactly one safe prompt and one harmful twin
    pairs = Counter((r.meta["pair"], r.label) for r in safe + unsafe)
    assert set(pairs.values()) == {1} and len({p for p, _ in pairs}) == 40
    assert all(r.type and not r.type.startswith("contrast_") for r in safe)
    assert all(r.type.startswith("contrast_") for r in unsafe)
    assert len({r.type for r in safe}) >= 8  # XSTest's spread of types, not one trick repeated
    assert len({r.prompt for r in safe + unsafe}) == 80
    assert len({r.id for r in safe + unsafe}) == 80


def test_demo_limit_keeps_file_order() -> None:
    assert [r.id for r in suites.load("demo-safe", limit=2)] == ["demo-01-safe", "demo-02-safe"]


def test_bundles_expand_in_order_without_duplicates() -> None:
    assert suites.expand(["xstest", "malicious-instruct", "xstest-safe"]) == [
        "xstest-safe",
        "xstest-unsafe",
        "malicious-instruct",
    ]
    assert suites.expand(["demo"]) == ["demo-safe", "demo-unsafe"]
    stl = suites.expand(["stl"])
    assert "stl-physical-safe" in stl and all(s.startswith("stl-") for s in stl)


def test_unknown_or_empty_suite_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown suite 'xstets'.*xstest"):
        suites.expand(["xstets"])
    with pytest.raises(DataError, match="no suites"):
        suites.expand([])


def test_files_and_direction() -> None:
    assert suites.files("demo-safe") == [suites.demo_path()]
    assert suites.demo_path().is_file()
    assert suites.higher_is_better(["safe", "safe"]) is True
    assert suites.higher_is_better(["unsafe"]) is False
    assert suites.higher_is_better(["safe", "unsafe"]) is None
