"""tbr.train: exact loss masks for both templates, a real tiny LoRA run (load, generate, resume, merge),
truncation accounting, 2-process DDP through `accelerate launch`, and bad input.

Training runs are tiny (SmolLM2-135M, a few steps, max_length 128, one torch thread: on a shared
2-core machine one thread per process is much faster than two spinning OpenMP threads).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tbr.config import build
from tbr.errors import ConfigError, DataError
from tbr.models import cpu_supports_bf16
from tbr.train import TrainConfig, load_rows, split_rows

FIXTURES = Path(__file__).parent / "fixtures"
ALPACA = FIXTURES / "train_alpaca.jsonl"
CHAT = FIXTURES / "train_chat.jsonl"
REPO = Path(__file__).resolve().parent.parent


def _subset(src: Path, dst: Path, n_general: int, n_safety: int) -> Path:
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    keep = [r for r in rows if r["kind"] == "general"][:n_general] + [
        r for r in rows if r["kind"] == "safety"
    ][:n_safety]
    dst.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return dst


def _cfg(**kw) -> TrainConfig:
    base = {"max_length": 128, "batch_size": 4, "threads": 1, "logging_steps": 1}
    return build(TrainConfig, {**base, **kw})


# ----------------------------------------------------------------------------- bad input (fast)


def test_missing_columns_names_file_and_line(tmp_path):
    p = tmp_path / "train.jsonl"
    good = ALPACA.read_text().splitlines()[0]
    p.write_text(good + "\n" + json.dumps({"id": "x", "prompt": "only a prompt"}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:2:1: missing column\(s\) completion"):
        load_rows(str(p))


def test_empty_file_and_missing_data(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_rows(str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="--data"):
        load_rows("")


def test_mixed_templates_and_wrong_types(tmp_path):
    a, c = ALPACA.read_text().splitlines()[0], CHAT.read_text().splitlines()[0]
    (tmp_path / "mixed.jsonl").write_text(a + "\n" + c + "\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl:2:1: chat-template row in a alpaca-template file"):
        load_rows(str(tmp_path / "mixed.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "completion": 3}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1:1: prompt/completion must both be strings"):
        load_rows(str(tmp_path / "bad.jsonl"))


def test_unknown_method_and_bad_options():
    with pytest.raises(ConfigError, match="method"):
        build(TrainConfig, {"method": "qlora"})
    with pytest.raises(ConfigError, match="val_fraction"):
        build(TrainConfig, {"val_fraction": 1.5})
    with pytest.raises(ConfigError, match="merge"):
        build(TrainConfig, {"method": "full", "merge": True})


def test_fixtures_load_and_split_is_stratified_and_seeded():
    rows, info, _ = load_rows(str(ALPACA))
    assert info == {"template": "alpaca", "reflection_format": "tagged"} and len(rows) == 40
    tr, va = split_rows(rows, 0.1, seed=0)
    assert len(tr) + len(va) == 40 and {r["kind"] for r in va} == {"general", "safety"}
    assert [r["id"] for r in split_rows(rows, 0.1, seed=0)[1]] == [r["id"] for r in va]
    assert split_rows(rows, 0.0, seed=0) == (rows, [])
    _, chat_info, _ = load_rows(str(CHAT))
    assert chat_info["template"] == "chat"


# ----------------------------------------------------------------------------- masks (slow: tokenizer + model)


@pytest.mark.slow
@pytest.mark.parametrize("data", [ALPACA, CHAT], ids=["alpaca", "chat"])
def test_mask_layout_is_exact(data, tmp_path):
    """Prompt tokens are -100; the labelled tokens decode to exactly the completion + end token."""
    from tbr.train import build_trainer, render_masks

    rows, info, _ = load_rows(str(data))
    rows = rows[:3] + rows[-3:]  # general and reflected safety samples
    trainer = build_trainer(_cfg(data=str(data), out=str(tmp_path)), rows, [], False, tmp_path / "ck")
    tok = trainer.processing_class
    feats = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator([{k: f[k] for k in ("input_ids", "labels")} for f in feats])
    for i, row in enumerate(rows):
        ids = batch["input_ids"][i].tolist()[: len(feats[i]["input_ids"])]
        labels = batch["labels"][i].tolist()[: len(ids)]
        first = next(j for j, lab in enumerate(labels) if lab != -100)
        assert all(lab == -100 for lab in labels[:first])  # the whole prompt is masked
        assert labels[first:] == ids[first:]  # and everything after it is trained, unshifted
        if info["template"] == "alpaca":
            assert tok.decode(ids[:first]) == row["prompt"]
            assert tok.decode(ids[first:]) == row["completion"] + tok.eos_token
        else:
            prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            assert tok.decode(ids[:first]) == prompt
            assert tok.decode(ids[first:]) == row["completion"][0]["content"] + tok.eos_token + "\n"
        assert ids[first:].count(tok.eos_token_id) == 1
    shown = render_masks(trainer, 2)
    assert shown.count("=== sample") == 2 and "[MASKED " in shown and "[TRAINED " in shown
    if info["template"] == "alpaca":
        assert repr(rows[0]["completion"] + tok.eos_token) in shown


@pytest.mark.slow
def test_truncation_is_counted_and_never_silent(tmp_path):
    from tbr.train import build_trainer, truncation_stats

    rows, _, _ = load_rows(str(ALPACA))
    trainer = build_trainer(_cfg(data=str(ALPACA), max_length=48), rows, [], False, tmp_path / "ck")
    tok = trainer.processing_class
    n_prompt = [len(tok(r["prompt"])["input_ids"]) for r in rows]
    n_full = [len(tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]) for r in rows]
    stats = truncation_stats(trainer, rows, 48)
    assert stats["n_truncated"] == sum(n > 48 for n in n_full) > 0
    assert stats["tokens_cut_max"] == max(n_full) - 48
    assert stats["n_dropped_no_completion_left"] == sum(p >= 48 for p in n_prompt) > 0
    assert stats["n_completion_partly_cut"] == sum(
        n > 48 and p < 48 for n, p in zip(n_full, n_prompt, strict=True)
    )
    # TRL drops the rows with nothing left to train on; what remains matches our count
    assert len(trainer.train_dataset) == len(rows) - stats["n_dropped_no_completion_left"]
    with pytest.raises(DataError, match="raise --max-length"):
        truncation_stats(trainer, rows, 10)


# ----------------------------------------------------------------------------- a real run (slow)


@pytest.mark.slow
def test_tiny_lora_run_loads_generates_resumes_and_merges(tmp_path, caplog):
    from tbr.generate.base import SamplingParams
    from tbr.generate.hf import TransformersBackend
    from tbr.models import load, resolve
    from tbr.train import train

    data = _subset(ALPACA, tmp_path / "train.jsonl", 12, 4)
    out = tmp_path / "run"
    cfg = _cfg(data=str(data), out=str(out), max_steps=2, val_fraction=0.25, eval_steps=1, lr=1e-3)
    with caplog.at_level(logging.INFO, logger="tbr.train"):
        assert train(cfg) == out
    # progress goes through logging (flushed per line), not Trainer's print() of raw dicts
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps[0].startswith("step 1/2 (50%), 00:00:") and " left, loss " in steps[0]
    assert any(m.startswith("step 2/2 (100%)") and "eval_loss" in m for m in steps)
    side = json.loads((out / "tbr_model.json").read_text())
    assert side == {"base": "smollm2-135m-instruct", "template": "alpaca", "reflection_format": "tagged"}
    man = json.loads((out / "manifest.json").read_text())
    assert man["stage"] == "train" and man["steps"] == 2 and man["n_train"] == 12 and man["n_val"] == 4
    # auto → bf16 autocast only where the CPU has native bf16 (AVX512-BF16/AMX), fp32 on AVX2
    native = "torch.bfloat16" if cpu_supports_bf16() else "torch.float32"
    assert man["precision"]["forward_dtype_seen"] == [native]
    assert man["truncation"]["n_truncated"] == 0 and os.path.relpath(data, out) in man["data"]
    assert man["losses"]["best_checkpoint"].endswith(("checkpoint-1", "checkpoint-2"))
    assert man["trl_args"]["completion_only_loss"] is True
    curve = (out / "loss.csv").read_text().splitlines()
    assert curve[0] == "step,epoch,split,loss,lr" and any(",val," in line for line in curve)
    assert (out / "loss.png").stat().st_size > 1000

    ref = resolve(str(out))
    assert ref.kind == "adapter" and ref.base_name == "smollm2-135m-instruct"
    model, tok, ref = load(str(out), dtype="fp32", device="cpu")
    assert tok.eos_token_id in model.generation_config.eos_token_id
    backend = TransformersBackend(ref, loaded=(model, tok, ref), progress=False)
    (text,) = backend.generate(
        [[{"role": "user", "content": "Name a color."}]], SamplingParams(max_new_tokens=6), fmt="alpaca"
    )
    assert isinstance(text, str) and text.strip()

    # Interrupted after step 1: the final output and checkpoint-2 are gone; --resume continues from
    # checkpoint-1, runs only step 2, and with --merge writes plain merged weights.
    for p in out.iterdir():
        if p.is_file():
            p.unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    train(_cfg(**{**cfg.__dict__, "resume": True, "merge": True}))
    man = json.loads((out / "manifest.json").read_text())
    assert man["resumed_from"].endswith("checkpoint-1") and man["steps"] == 2
    assert [r.split(",")[0] for r in (out / "loss.csv").read_text().splitlines()[1:]].count(
        "1"
    ) == 2  # step 1 kept
    ref = resolve(str(out))
    assert (
        ref.kind == "hf" and ref.base_name == "smollm2-135m-instruct" and (out / "model.safetensors").exists()
    )
    model, tok, _ = load(str(out), dtype="fp32", device="cpu")
    assert tok.eos_token_id in model.generation_config.eos_token_id
    with pytest.raises(ConfigError, match="--resume"):  # a second fresh run must not clobber checkpoints
        train(cfg)


@pytest.mark.slow
def test_bf16_forced_really_runs_in_bf16(tmp_path):
    """The forward hook sees bfloat16 activations (fp32 master weights, autocast), even without native bf16."""
    from tbr.train import train

    data = _subset(ALPACA, tmp_path / "train.jsonl", 3, 1)
    out = train(_cfg(data=str(data), out=str(tmp_path / "bf"), max_steps=1, val_fraction=0, bf16="true"))
    man = json.loads((out / "manifest.json").read_text())
    assert man["precision"]["forward_dtype_seen"] == ["torch.bfloat16"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    data = _subset(ALPACA, tmp_path / "train.jsonl", 6, 2)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()),
        "-m", "tbr.cli", "train", "--data", str(data), "--out", str(out), "--max-steps", "2",
        "--batch-size", "2", "--max-length", "128", "--val-fraction", "0", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["world_size"] == 2 and man["steps"] == 2
    assert (out / "adapter_model.safetensors").exists() and (out / "tbr_model.json").exists()
    shutil.rmtree(out)
