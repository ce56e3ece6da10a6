import argparse
import json
from dataclasses import dataclass

import pytest

from tbr.config import add_arguments, build, from_args, opt, scrub, write_manifest
from tbr.errors import ConfigError


@dataclass
class Demo:
    model: str = opt("m0", "model")
    n: int = opt(3, "count")
    rate: float = opt(0.5, "rate")
    flag: bool = opt(False, "a switch")
    suites: list[str] = opt(["a"], "names")
    kind: str = opt("x", "kind", choices=("x", "y"))
    api_key: str | None = opt(None, "secret")

    def validate(self) -> None:
        if self.n < 0:
            raise ConfigError("n must be >= 0")


def parse(argv, tmp_path=None, yaml_text=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_arguments(p, Demo)
    if yaml_text is not None:
        f = tmp_path / "c.yaml"
        f.write_text(yaml_text)
        argv = ["--config", str(f), *argv]
    return from_args(Demo, p.parse_args(argv), section="demo")


def test_defaults_yaml_and_flags_precedence(tmp_path):
    assert parse([]) == Demo()
    cfg = parse(["--n", "7"], tmp_path, "model: from-yaml\nn: 5\nsuites: [p, q]\n")
    assert (cfg.model, cfg.n, cfg.suites) == ("from-yaml", 7, ["p", "q"])  # flag beats YAML
    cfg = parse(["--suites", "u,v", "--flag"], tmp_path, "demo:\n  rate: 0.25\n")  # stage section
    assert (cfg.suites, cfg.flag, cfg.rate) == (["u", "v"], True, 0.25)


def test_bad_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        parse([], tmp_path, "modle: typo\n")
    with pytest.raises(ConfigError, match="'n'"):
        parse(["--n", "three"])
    with pytest.raises(ConfigError, match="not one of"):
        build(Demo, {"kind": "z"})
    with pytest.raises(ConfigError, match="n must be"):
        build(Demo, {"n": -1})
    with pytest.raises(ConfigError, match=r"c.yaml:2:"):
        parse([], tmp_path, "n: 1\n  bad: [\n")


def test_manifest_has_reproducibility_fields_and_no_secret(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("hello")
    cfg = build(Demo, {"api_key": "sk-very-secret"})
    path = write_manifest(
        tmp_path, "demo", cfg, models=[{"name": "m", "weights_hash": "abc"}], data_files=[data]
    )
    text = path.read_text()
    assert "sk-very-secret" not in text
    m = json.loads(text)
    assert m["stage"] == "demo" and m["config"]["n"] == 3
    assert m["data"]["d.txt"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert m["packages"]["torch"] and m["packages"]["transformers"]
    assert m["models"][0]["weights_hash"] == "abc"
    assert "commit" in m["git"]


def test_scrub_keeps_env_var_names():
    out = scrub({"api_key_env": "OPENAI_API_KEY", "nested": {"token": "t"}, "x": [{"password": "p"}]})
    assert out == {
        "api_key_env": "OPENAI_API_KEY",
        "nested": {"token": "<redacted>"},
        "x": [{"password": "<redacted>"}],
    }


def test_scrub_redacts_secret_words_but_not_token_counts():
    out = scrub({"hf_token": "hf_x", "OPENAI_API_KEY": "sk", "max_new_tokens": 96, "key": "abc123"})
    assert out == {
        "hf_token": "<redacted>",
        "OPENAI_API_KEY": "<redacted>",
        "max_new_tokens": 96,
        "key": "abc123",
    }
