"""Linear layers on CPU with their weights packed once per batch, not once per call.

A CPU `F.linear` hands its weight to the GEMM library in PyTorch's row-major layout, and the library
reorders it into its own blocked layout inside every call. In a decode step, where each weight meets
only a few dozen rows, that reorder is a large share of the call. Packed once per batch and called
through the packed entry points (what PyTorch's inductor does for frozen CPU graphs), the same
matmul is faster. A layer is packed only where its packed kernel gives `F.linear`'s numbers bit for
bit on the CPU at hand (one seeded probe per weight shape and batch), so greedy answers do not change:

  bf16  oneDNN (`mkldnn._reorder_linear_weight` / `_linear_pointwise`), where oneDNN computes bf16
        natively (avx512_bf16 or AMX). One core of a Xeon with AMX, 64 rows: SmolLM2-135M's 576×1536
        projection 125 µs instead of 209 µs, the 49k-row LM head 6.2 ms instead of 11.0 ms; equal at
        every row count tried (1 to 2,560).
  fp32  not packed. MKL's packed SGEMM was 1.07-1.23× per projection at 128 rows on the same core,
        but only at exactly the row count it was packed for (any other count takes MKL's plain path
        inside the op), which a decode batch loses with its first finished row: no gain end to end
        (`kind`). It also rounded otherwise than `F.linear` on a 64-wide toy layer.

Packing is scoped to one batch (a context manager around `TransformersBackend.decode`) and undone
afterwards, so a model whose weights change between calls (a training loop that evaluates) never
decodes with stale copies; the copies cost one model's weights in memory while they live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def kind(model: Any) -> str | None:
    """ "onednn" (bf16 where oneDNN computes it natively) or None: the packed path this model can take.

    Whether taking it pays is `usable`'s question.
    """
    try:
        dev, dt = model.device, model.dtype
    except AttributeError:
        return None
    if dev.type != "cpu":
        return None
    if dt == torch.bfloat16 and torch.backends.mkldnn.is_available():
        ok = (
            hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        return "onednn" if ok else None
    # fp32 stays plain: MKL's packed SGEMM (`mkl._mkl_linear`) only pays at exactly the row count it
    # was packed for, and a decode batch loses that count with its first finished row. Measured end
    # to end (SmolLM2, 128 XSTest prompts × 128 tokens, one AMX Xeon core): 56.9 vs 57.5 CPU s, no gain.
    return None


def usable(model: Any) -> bool:
    """Whether `linear="auto"` packs this model here: where the packed path exists *and* pays.

    It pays with AMX only. On a 2-core AMD EPYC with avx512_bf16 and no AMX (SmolLM2-135M, 128 XSTest
    prompts × 128 tokens, batch 128, one core, best of 2) packed decoding ran at 573 tok/CPU-s against
    600 plain (0.96×, benchmarks/results/generation-epyc-avx512bf16-2026-12-02.json): there oneDNN's
    avx512_bf16 GEMM gains less from the blocked layout than the packed call costs.
    """
    from tbr.models import cpu_has_amx

    return kind(model) is not None and cpu_has_amx()


def _onednn(weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> Callable[[torch.Tensor], Any]:
    packed, out = torch.ops.mkldnn._reorder_linear_weight(weight, rows), weight.shape[0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], out)

    return forward


def _same_as_plain(forward: Callable[[torch.Tensor], Any], m: torch.nn.Linear, rows: int) -> bool:
    """A packed kernel that blocks its sums differently rounds differently, whatever the input: one
    seeded probe at the packed row count and at one row tells whether it matches F.linear here."""
    g = torch.Generator().manual_seed(0)
    for n in sorted({rows, 1}):
        x = torch.randn(n, m.in_features, generator=g).to(m.weight.dtype)
        if not torch.equal(forward(x), torch.nn.functional.linear(x, m.weight, m.bias)):
            return False
    return True


@contextmanager
def packed_linears(model: Any, rows: int) -> Iterator[int]:
    """Every plain `nn.Linear` of `model` runs on a packed copy of its weight inside the block, where
    the packed kernel gives F.linear's numbers bit for bit on this CPU (checked once per weight shape);
    yields how many were packed. `rows`: the batch's row count (the packing hint)."""
    make = _onednn if kind(model) == "onednn" else None
    dtype = model.dtype if make else None
    patched: list[torch.nn.Module] = []
    same: dict[tuple[int, int, bool], bool] = {}  # (in, out, bias) -> packed equals plain
    try:
        if make:
            rows = max(1, rows)
            with torch.no_grad():
                for m in model.modules():
                    # subclasses (LoRA wrappers, quantised layers) keep their own forward
                    if type(m) is not torch.nn.Linear or m.weight.dtype != dtype:
                        continue
                    fwd = make(m.weight.detach(), m.bias, rows)
                    shape = (m.in_features, m.out_features, m.bias is not None)
                    if shape not in same:
                        same[shape] = _same_as_plain(fwd, m, rows)
                    if same[shape]:
                        m.forward = fwd
                        patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward  # the instance attribute: the class's forward is back
