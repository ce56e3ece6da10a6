"""Decode-step attention for bf16 on CPU: two matmuls instead of PyTorch's flash kernel.

In a decode step each row asks one query token against its KV cache. On CPU, PyTorch's SDPA sends a
bf16 query of that shape to its flash-attention kernel, which is built for long query blocks. Written
as q·Kᵀ → softmax → ·V, with the query heads that share a KV head side by side (GQA without a
`repeat_kv` copy), a layer's attention call inside tbr's decode loop took 0.82 ms instead of
1.40-1.65 ms (SmolLM2-135M, batch 64, 64 new tokens, one AVX512-BF16 core): from 24% of the decode
time to 16% (issue 14; benchmarks/README.md has the end-to-end figures).

The numerics are those of transformers' own "eager" attention in bf16: scores come out of a bf16
matmul, softmax runs in fp32. That rounds differently from the flash kernel (neither is closer to
fp32 in general), so greedy bf16 answers can differ from SDPA's; the benchmark counts how many.
Everything else is left to SDPA unchanged: fp32 (where tbr promises outputs identical to
`model.generate`), prefill (several query tokens), other devices.

Not on CPUs with AMX: there PyTorch's flash kernel runs its bf16 blocks on the AMX tiles, and SDPA was
the faster of the two in every measurement (SmolLM2-135M, 128 XSTest prompts × 128 tokens, batch 128,
one core, bf16 weights packed: 1.02-1.09× in three alternating pairs, 2026-12-07; 1.07× and ~1.0× in
2026-12-02's runs; benchmarks/README.md, issue 14).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "tbr_decode"


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (B, H, q, D), key/value (B, Hkv, L, D); returns
    (B, q, H, D). The mask is SDPA's (bool, True = attend, broadcast over heads) or None."""
    b, h, q_len, d = query.shape
    fast = q_len == 1 and query.dtype == torch.bfloat16 and query.device.type == "cpu"
    if not fast or dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    hkv = key.shape[1]
    scale = scaling if scaling is not None else d**-0.5
    q = query.reshape(b, hkv, h // hkv, d)  # the query heads that share a KV head, side by side
    # The KV cache hands over views of its preallocated buffers (tbr.generate.kv). A bf16 matmul on a
    # strided view falls off oneDNN onto a slow generic kernel: one copy to contiguous memory first
    # halves the call (0.82 vs 1.50 ms, end to end inside the decode loop).
    key, value = key.contiguous(), value.contiguous()
    scores = torch.matmul(q, key.transpose(-1, -2)).float().mul_(scale)  # (B, Hkv, group, L)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, float("-inf"))
        else:  # an additive float mask
            scores.add_(attention_mask)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, Hkv, group, D)
    return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make NAME a transformers attention implementation (masks as for SDPA); idempotent."""
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_for(model: Any, force: bool = False) -> bool:
    """Switch a bf16 CPU model that runs SDPA to decode_attention where it pays (no AMX; `force`: on
    any CPU). Returns whether it switched.

    Prefill (several query tokens), fp32 and other devices still reach SDPA through decode_attention's
    fallback, so other code sharing the model (attribution and training run whole sequences) computes
    exactly what it did before; only one-token bf16 steps change."""
    from tbr.models import cpu_has_amx

    if model.device.type != "cpu" or model.dtype != torch.bfloat16 or (cpu_has_amx() and not force):
        return False
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    register()
    if model.config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    return True
