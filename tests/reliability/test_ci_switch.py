"""CI: with TBR_REQUIRE_ALL=1 (set by .ci/run) a missing llama.cpp server or Chromium fails the test
that needs it instead of skipping it silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.require import require, require_module

ROOT = Path(__file__).resolve().parents[2]


def test_missing_tool_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TBR_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_module("tbr_no_such_module_xyz")


def test_missing_tool_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBR_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="TBR_REQUIRE_ALL"):
        require("chromium is not installed")


def test_ci_sets_the_switch_and_lints() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export TBR_REQUIRE_ALL=1" in ci and "make lint" in ci and "make test" in ci
    # the tests that need the tools go through the switch
    assert 'require_module("llama_cpp"' in (ROOT / "tests" / "conftest.py").read_text()
    assert "require(" in (ROOT / "tests" / "report" / "test_report_browser.py").read_text()
