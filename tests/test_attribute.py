import json

import pytest

from tbr.attribute import AttributeConfig, run
from tbr.config import build
from tbr.errors import ConfigError


def test_unknown_probe_is_rejected():
    with pytest.raises(ConfigError, match="unknown probe"):
        build(AttributeConfig, {"probes": ["nope"]})


@pytest.mark.slow
def test_only_the_replaced_word_gets_attribution(tmp_path):
    cfg = build(AttributeConfig, {"probes": ["xstest-26"], "target": "Sorry, I can't.", "out": str(tmp_path)})
    assert run(cfg) == 0
    rows = json.loads((tmp_path / "attribution.json").read_text())["rows"]
    (row,) = rows
    assert row["features"] == ["kill", "person"] and row["baselines"] == ["love", "person"]
    n_target = len(row["output_tokens"])
    assert n_target >= 3 and len(row["token_attr"]) == n_target
    # "person" keeps its own value as baseline, so ablating it changes nothing: exactly zero, per token.
    assert all(t[1] == 0.0 for t in row["token_attr"])
    assert any(abs(t[0]) > 1e-4 for t in row["token_attr"])
    assert (tmp_path / "smollm2-135m-instruct-xstest-26.png").stat().st_size > 0
    assert "xstest-26" in (tmp_path / "attribution.md").read_text()
    assert json.loads((tmp_path / "manifest.json").read_text())["stage"] == "attribute"
