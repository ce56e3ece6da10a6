"""tbr.loss: the completion-only LM head gives TRL's loss and gradients, on TRL's own batches, while the
head sees only labelled positions; TRL's token metrics are off unless asked for.

Real SmolLM2-135M, fp32, one thread, a few fixture rows at max_length 128.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tbr.config import build
from tbr.train import TrainConfig, build_trainer, load_rows

pytestmark = pytest.mark.slow

ALPACA = Path(__file__).parent / "fixtures" / "train_alpaca.jsonl"


def _trainer(tmp_path: Path, rows: list, **kw):
    cfg = build(TrainConfig, {"data": str(ALPACA), "out": str(tmp_path), "method": "full", "bf16": "false",
                              "max_length": 128, "batch_size": 4, "threads": 1, "logging_steps": 1,
                              "val_fraction": 0.0, "lr_scheduler": "linear", "warmup_ratio": 0.0, **kw})  # fmt: skip
    return build_trainer(cfg, rows, [], False, tmp_path / "checkpoints")


@pytest.fixture(scope="module")
def rows():
    return load_rows(str(ALPACA))[0][:8]


def _batch(trainer, n: int = 4):
    ds = trainer.train_dataset
    return trainer.data_collator([{k: ds[i][k] for k in ("input_ids", "labels")} for i in range(n)])


def test_loss_and_gradients_equal_trl_and_head_sees_only_labels(tmp_path, rows, monkeypatch):
    import torch
    from trl.kernels import ChunkedLogProbFunction

    ref = _trainer(tmp_path / "trl", rows, loss="trl")
    new = _trainer(tmp_path / "new", rows)  # loss=completion is the default
    assert new.tbr_completion_head and not hasattr(ref, "tbr_completion_head")
    batch = _batch(ref)
    assert torch.equal(batch["input_ids"], _batch(new)["input_ids"])  # the same tokenization and masks
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    n_positions = batch["labels"][:, 1:].numel()
    assert n_labelled < n_positions  # prompts and padding are there to skip

    seen: list[int] = []
    apply = ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        seen.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(ChunkedLogProbFunction, "apply", spy)  # TRL's head and tbr's both call it
    losses, grads = [], []
    for trainer in (ref, new):
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        losses.append(loss.item())
        p = dict(trainer.model.named_parameters())
        grads.append(
            {n: p[n].grad.clone() for n in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight")}
        )
    # TRL scores every position; tbr only the labelled ones.
    assert seen == [n_positions, n_labelled]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_training_steps_match_trl_path_and_metrics_are_opt_in(tmp_path, rows):
    logs = {}
    for name, kw in (("trl", {"loss": "trl"}), ("now", {}), ("metrics", {"token_metrics": True})):
        trainer = _trainer(tmp_path / name, rows[:4], max_steps=2, batch_size=2, max_length=96, **kw)
        trainer.args.save_strategy = "no"
        trainer.train()
        logs[name] = [h for h in trainer.state.log_history if "loss" in h]
    for name in ("now", "metrics"):
        assert [h["num_tokens"] for h in logs[name]] == [h["num_tokens"] for h in logs["trl"]]  # same batches
        for a, b in zip(logs[name], logs["trl"], strict=True):
            assert abs(a["loss"] - b["loss"]) < 0.02  # the bar; in fp32 it is ~1e-6
    assert all("entropy" in h and "mean_token_accuracy" in h for h in logs["trl"] + logs["metrics"])
    assert not any("entropy" in h or "mean_token_accuracy" in h for h in logs["now"])
    for a, b in zip(logs["metrics"], logs["trl"], strict=True):
        assert a["mean_token_accuracy"] == pytest.approx(b["mean_token_accuracy"], abs=1e-6)
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-4)


def test_packed_rows_give_the_same_per_row_losses_as_unpacked(tmp_path, rows):
    """Padding-free packing is only correct if each row attends to itself alone: per-row losses from one
    packed row (TRL's padding-free collator: position_ids, no attention mask) must equal the padded batch's."""
    import torch
    import torch.nn.functional as F
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tbr.loss import packing_leak

    trainer = _trainer(tmp_path, rows[:3])
    model = trainer.model.eval()
    assert packing_leak(model) < 1e-3
    feats = [{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(3)]
    pad_id = trainer.processing_class.pad_token_id

    def row_losses(batch) -> list[float]:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                              reduction="none").view(logits.shape[0], -1)  # fmt: skip
        return nll, batch["labels"][:, 1:] != -100

    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(feats)
    nll, mask = row_losses(padded)
    unpacked = [(nll[i] * mask[i]).sum().item() / mask[i].sum().item() for i in range(3)]

    packed = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(feats)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    nll, mask = row_losses(packed)
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
    got = []
    for lo, hi in zip(starts, starts[1:], strict=False):
        seg = slice(lo, hi - 1)  # targets of row k live at positions lo..hi-2 after the shift
        got.append((nll[0, seg] * mask[0, seg]).sum().item() / mask[0, seg].sum().item())
    assert got == pytest.approx(unpacked, abs=1e-4)
