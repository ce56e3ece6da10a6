"""The completion-only loss of `tbr train`, computed where it is needed and nowhere else.

TRL's SFTTrainer (1.16) already avoids full `[tokens × vocab]` logits with a fused, chunked LM head
(`trl.kernels.ChunkedLogProbFunction`). On devices without Triton, though, it scores *every* position,
prompt and padding included, and it always computes the entropy and top-1 accuracy that only feed its
logged metrics. For a TBR training row the prompt is a third of the tokens, and the LM head (576 × 49,152
for SmolLM2) is a fifth of the model's FLOPs per scored token, so that is work thrown away on every step.

`add_completion_head` patches the model's forward the way TRL does (so DDP / FSDP / PEFT wrappers still
run their hooks: the call goes through `model(...)`), with one change of substance: only the positions
whose next-token label is not -100 reach the LM head. The per-token log-probabilities come from TRL's own
chunked kernel, in vocabulary tiles sized for a CPU cache rather than a GPU (`chunk_size`), so neither the
forward nor the backward ever holds more than `[labelled tokens × chunk_size]` logits.

The loss is the same sum of -log p(target) over labelled tokens that TRL computes; tests/test_train.py
checks it against TRL's path on the same batches.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

# 8,192 vocabulary columns per tile: [~1,500 labelled tokens × 8,192] fp32 is ~50 MB, a few times the
# L2+L3 of a CPU core rather than TRL's 32,768-column GPU tile (a ~400 MB buffer per call on CPU).
DEFAULT_CHUNK = 8192
# Output-scaling attributes that TRL's head honours; a model that has one keeps TRL's own path.
_SCALED = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


@dataclass
class CompletionLoss:
    """What the patched forward returns: summed NLL and how many tokens it covers (+ optional metrics)."""

    nll_sum: Any  # scalar tensor, differentiable
    n_tokens: Any  # scalar tensor (labelled positions in this micro-batch)
    entropy_sum: Any = None  # only with metrics=True
    n_top1: Any = None


def supports_completion_head(model: Any) -> bool:
    """True for a plain causal LM whose logits are `hidden @ W.T (+ b)`, unscaled."""
    cfg = model.config.get_text_config()
    return (
        model.get_output_embeddings() is not None
        and hasattr(model, model.base_model_prefix)
        and all(getattr(cfg, k, None) in (None, 1.0) for k in _SCALED)
    )


def add_completion_head(model: Any, chunk_size: int = DEFAULT_CHUNK, metrics: bool = False) -> None:
    """Patch `model.forward`: `model(..., labels=L, tbr_completion_loss=True)` returns a CompletionLoss.

    Without the flag the forward is the original one, so evaluation, generation and TRL's own paths are
    unchanged. Patch the unwrapped model (before or after PEFT, as TRL does: PEFT calls this forward).
    """
    from trl.kernels import ChunkedLogProbFunction

    original = model.forward
    outputs = ("log_probs", "entropy", "is_top1") if metrics else ("log_probs",)

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def forward(self: Any, *args: Any, tbr_completion_loss: bool = False, labels: Any = None, **kwargs: Any):
        if not tbr_completion_loss:
            return original(*args, **({"labels": labels} if labels is not None else {}), **kwargs)
        kwargs["use_cache"] = False
        kwargs.pop("num_items_in_batch", None)
        hidden = getattr(self, self.base_model_prefix)(*args, **kwargs).last_hidden_state
        targets = labels[:, 1:]
        mask = targets != -100
        head = self.get_output_embeddings()
        # Boolean indexing keeps only the labelled positions: the prompt and the padding never meet the head.
        logp, entropy, _, _, top1 = ChunkedLogProbFunction.apply(
            hidden[:, :-1][mask], head.weight, head.bias, targets[mask], 1.0, chunk_size, None, 1.0, outputs
        )
        return CompletionLoss(
            nll_sum=-logp.sum(),
            n_tokens=mask.sum(),
            entropy_sum=entropy.detach().sum() if entropy is not None else None,
            n_top1=top1.sum() if top1 is not None else None,
        )

    model.forward = types.MethodType(forward, model)


def packing_leak(model: Any) -> float:
    """Max |logit difference| between two short rows run alone and the same rows packed into one.

    Packed (padding-free) batches carry only `position_ids`; whether the attention then stays inside each
    row depends on the attention implementation and on transformers' mask logic (5.x builds a
    block-diagonal mask from position_ids, but only when no KV cache is in play). Rather than trust a
    version table, `tbr train --packing` measures it on the model it is about to train. Zero (to rounding)
    means isolated.
    """
    import torch

    a = torch.tensor([[1, 2, 3, 4, 5, 6, 7]]) + 100
    b = torch.tensor([[9, 8, 7, 6, 5]]) + 200
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        alone = [model(input_ids=x, use_cache=False).logits[0].float() for x in (a, b)]
        pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits[0].float()
    model.train(was_training)
    return max((packed[: a.shape[1]] - alone[0]).abs().max().item(),
               (packed[a.shape[1]:] - alone[1]).abs().max().item())  # fmt: skip


def completion_trainer_class() -> type:
    """SFTTrainer whose training and eval loss use `add_completion_head` (built lazily: imports TRL)."""
    import torch
    from trl import SFTTrainer

    class CompletionSFTTrainer(SFTTrainer):
        """SFTTrainer with the completion-only LM head; TRL's entropy/accuracy metrics only on request."""

        def __init__(self, *args: Any, tbr_chunk_size: int = DEFAULT_CHUNK, tbr_token_metrics: bool = False,
                     **kwargs: Any) -> None:  # fmt: skip
            super().__init__(*args, **kwargs)
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            self.tbr_completion_head = supports_completion_head(base) and self._plain_nll()
            self.tbr_token_metrics = tbr_token_metrics
            if self.tbr_completion_head:
                add_completion_head(base, tbr_chunk_size, metrics=tbr_token_metrics)

        def _plain_nll(self) -> bool:
            # Everything else (DFT, label smoothing, a custom loss, MoE aux loss, sequence parallelism)
            # keeps TRL's own compute_loss.
            pc = self.accelerator.parallelism_config
            return (
                self.args.loss_type == "nll"
                and self.compute_loss_func is None
                and self.label_smoother is None
                and not self.aux_loss_enabled
                and not (pc is not None and getattr(pc, "sp_enabled", False))
            )

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            if not self.tbr_completion_head or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            out = model(**inputs, tbr_completion_loss=True)
            # num_items_in_batch: labelled tokens of the whole accumulated step (all ranks), as in TRL.
            n = out.n_tokens if num_items_in_batch is None else num_items_in_batch
            loss = out.nll_sum / torch.as_tensor(n).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if self.tbr_token_metrics:
                gather = self.accelerator.gather_for_metrics
                valid = gather(out.n_tokens).sum()
                if valid > 0:
                    self._metrics[mode]["entropy"].append((gather(out.entropy_sum).sum() / valid).item())
                    self._metrics[mode]["mean_token_accuracy"].append(
                        (gather(out.n_top1).sum() / valid).item()
                    )
            if mode == "train":  # the `num_tokens` log that TRL keeps (real, non-padding input tokens)
                seen = (
                    inputs["attention_mask"].sum()
                    if "attention_mask" in inputs
                    else inputs["position_ids"].numel()
                )
                seen = self.accelerator.gather_for_metrics(torch.as_tensor(seen)).sum().item()
                self._total_train_tokens += seen // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CompletionSFTTrainer


__all__ = [
    "CompletionLoss",
    "add_completion_head",
    "completion_trainer_class",
    "packing_leak",
    "supports_completion_head",
]
