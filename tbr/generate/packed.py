"""bf16 linear layers on CPU with their weights packed once per batch, not once per call.

On CPU a bf16 `F.linear` hands its weight to oneDNN in PyTorch's row-major layout, and oneDNN
reorders it into its own blocked layout (the AMX / AVX512-BF16 tile order) on every call: in a decode
step, where each weight meets only a few dozen rows, that reorder costs about as much as the matmul.
Packed once with `torch.ops.mkldnn._reorder_linear_weight` and called through `_linear_pointwise`
(what PyTorch's own inductor does for frozen CPU graphs), SmolLM2-135M's 576×1536 projection at 64
rows took 125 µs instead of 209 µs, the 49k-row LM head 6.2 ms instead of 11.0 ms, on one core of a
Xeon with AMX; the output was bit-identical to `F.linear` at every row count tried (1 to 2,560), so
greedy answers do not change (tests/generate/test_packed.py checks the equality on the CPU at hand).

Packing is scoped to one batch (a context manager around `TransformersBackend.decode`) and undone
afterwards, so a model whose weights change between calls (a training loop that evaluates) never
decodes with stale copies; the copies cost one bf16 model's size while they live. fp32 is left to
MKL: its packed GEMM gains only at exactly the packed row count, which a decode loop that drops
finished rows rarely has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def usable(model: Any) -> bool:
    """bf16 weights on a CPU where oneDNN computes bf16 natively (avx512_bf16 or AMX)."""
    try:
        dev, dt = model.device, model.dtype
    except AttributeError:
        return False
    return (
        dev.type == "cpu"
        and dt == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _forward(packed: torch.Tensor, bias: torch.Tensor | None, out: int) -> Callable[[torch.Tensor], Any]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
        return y.reshape(*x.shape[:-1], out)

    return forward


@contextmanager
def packed_linears(model: Any, rows: int) -> Iterator[int]:
    """Every plain bf16 `nn.Linear` of `model` runs on a packed copy of its weight inside the block;
    yields how many were packed (0 where `usable` is false). `rows` is oneDNN's hint for the batch."""
    patched: list[torch.nn.Module] = []
    try:
        if usable(model):
            with torch.no_grad():
                for m in model.modules():
                    # subclasses (LoRA wrappers, quantised layers) keep their own forward
                    if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16:
                        w = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), max(1, rows))
                        m.forward = _forward(w, m.bias, m.out_features)
                        patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward  # the instance attribute: the class's forward is back
