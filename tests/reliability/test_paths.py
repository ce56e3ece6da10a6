"""Defect 8: manifests and the product name no folder of one machine.

Manifests used to record absolute paths (cache, venv, data files, argv[0]); code, messages and docs
named a development machine's data folder. Users have neither.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tbr.config import write_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_paths_are_relative_with_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "xstest").mkdir(parents=True)
    (data / "xstest" / "x.csv").write_text("prompt\nhi\n")
    run = tmp_path / "runs" / "eval"
    cache = tmp_path / "cache"
    monkeypatch.setenv("TBR_DATA_DIR", str(data))
    monkeypatch.setenv("TBR_CACHE", str(cache))
    monkeypatch.setattr(sys, "argv", [str(Path(sys.prefix) / "bin" / "tbr"), "eval", f"--out={run}"])
    model = {"name": "m", "path": str(cache / "models" / "m"), "adapter": str(tmp_path / "runs" / "train")}
    write_manifest(
        run,
        "eval",
        {"out": str(run), "data_dir": None},
        models=[model],
        data_files=[data / "xstest" / "x.csv"],
    )
    text = (run / "manifest.json").read_text()
    m = json.loads(text)
    assert str(tmp_path) not in text and str(Path.home()) not in text and sys.prefix not in text
    assert m["argv"] == ["tbr", "eval", "--out=."]
    assert m["config"]["out"] == "."
    assert m["models"][0]["path"] == "$TBR_CACHE/models/m" and m["models"][0]["adapter"] == "../train"
    ((path, digest),) = m["data"].items()
    assert path == "$TBR_DATA_DIR/xstest/x.csv" and len(digest) == 64


_MACHINE = re.compile(r"/work/(shared|main)\b|/root/|/home/\w+/")


@pytest.mark.parametrize("tree", ["tbr", "tests", "docs", "configs", "README.md", "Makefile"])
def test_no_machine_paths_in_code_and_docs(tree: str) -> None:
    base = ROOT / tree
    files = (
        [base]
        if base.is_file()
        else [
            p
            for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.name != "test_paths.py"
        ]
    )
    hits = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [
            f"{f.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for m in _MACHINE.finditer(text)
        ]
    assert not hits, "machine paths:\n" + "\n".join(hits)
