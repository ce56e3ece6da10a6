"""Skip-or-fail for tests that need a tool outside Python (the llama.cpp server, Chromium).

On a developer's machine a missing tool skips the test with the reason. CI sets TBR_REQUIRE_ALL=1
(.ci/run), and there a missing tool fails the test instead: a green CI run then means the
llama.cpp-server and browser tests really ran.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

ENV = "TBR_REQUIRE_ALL"


def required() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def require(reason: str) -> NoReturn:
    """Skip with `reason`, or fail with it when TBR_REQUIRE_ALL is set."""
    if required():
        pytest.fail(f"{reason} ({ENV}=1: required tools must be present)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, hint: str = "") -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(f"{name} is not importable ({e}){'; ' + hint if hint else ''}")
