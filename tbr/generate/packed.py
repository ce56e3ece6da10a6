"""Linear layers on CPU with their weights packed once per batch, not once per call.

A CPU `F.linear` hands its weight to the GEMM library in PyTorch's row-major layout, and the library
reorders it into its own blocked layout inside every call. In a decode step, where each weight meets
only a few dozen rows, that reorder is a large share of the call. Packed once per batch and called
through the packed entry points (what PyTorch's inductor does for frozen CPU graphs), the same
matmul is faster. A layer is packed only where its packed kernel gives `F.linear`'s numbers bit for
bit on the CPU at hand (one seeded probe per weight shape and row count), so greedy answers do not
change:

  bf16  oneDNN (`mkldnn._reorder_linear_weight` / `_linear_pointwise`), where oneDNN computes bf16
        natively (avx512_bf16 or AMX). One core of a Xeon with AMX, 64 rows: SmolLM2-135M's 576×1536
        projection 125 µs instead of 209 µs, the 49k-row LM head 6.2 ms instead of 11.0 ms; equal at
        every row count tried (1 to 2,560). One packed weight serves every row count.
  fp32  MKL's packed SGEMM (`mkl._mkl_reorder_linear_weight` / `_mkl_linear`). One core of a Xeon with
        AMX, 128 rows: 576×1536 1.44 ms instead of 1.73 ms, the LM head 47.8 ms instead of 68.6 ms,
        equal to F.linear at 8 to 128 rows. MKL's packed weight serves only the row count it was
        packed for (any other count takes the plain path inside the op), and a decode batch loses rows
        as answers finish. So a step with fewer rows is padded with zero rows up to the packed count:
        the rows of a GEMM do not mix, so a live row gets the numbers it gets in the full batch (which
        is what `model.generate`, which never drops rows, computes too). Once padding would waste more
        than 1/8 of a call, the layer goes back to F.linear for the rest of the batch. It is not
        packed again for the live rows: a pack of SmolLM2-135M costs ~0.3 CPU-s, about five steps'
        savings at 128 rows and more at fewer, and packing again at every 1/8 lost (as a first version
        did) made the 550-prompt eval stage, whose answers end early, only 1.05× faster than plain,
        with a 6.3 GB peak instead of 1.5 GB. Only steps of one token a row take this path; a prefill
        stays plain.

Packing is scoped to one batch (a context manager around `TransformersBackend.decode`) and undone
afterwards, so a model whose weights change between calls (a training loop that evaluates) never
decodes with stale copies; the copies cost one model's weights in memory while they live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

# fp32: pad a step up to the packed row count while its live rows are at least this share of it.
PAD_ABOVE = 7 / 8
# fp32: batches of fewer rows stay plain. A pack costs ~0.3 CPU-s for SmolLM2, and small row counts save
# little per step: 8 rows × 128 tokens 0.99× plain, 16 × 64 1.14×, 32 × 32 1.11× (one AMX Xeon core).
MKL_MIN_ROWS = 16

Forward = Callable[[torch.Tensor], torch.Tensor]
Probe = Callable[[Forward, torch.nn.Linear, int], bool]  # (packed forward, layer, rows) -> equal to F.linear


def kind(model: Any) -> str | None:
    """ "onednn" (bf16 where oneDNN computes it natively), "mkl" (fp32 where torch has MKL's packed
    SGEMM) or None: the packed path this model can take. Whether taking it pays is `usable`'s question.
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
    if dt == torch.float32 and torch.backends.mkl.is_available():
        return "mkl" if hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight") else None
    return None


def usable(model: Any) -> bool:
    """Whether `linear="auto"` packs this model here: where the packed path exists *and* pays.

    It is measured to pay with AMX (benchmarks/README.md, issue 14: bf16 and fp32). On a 2-core AMD
    EPYC with avx512_bf16 and no AMX (SmolLM2-135M, 128 XSTest prompts × 128 tokens, batch 128, one
    core, best of 2) packed bf16 decoding ran at 573 tok/CPU-s against 600 plain (0.96×,
    benchmarks/results/generation-epyc-avx512bf16-2026-12-02.json): there oneDNN's avx512_bf16 GEMM
    gains less from the blocked layout than the packed call costs. fp32 packing was not measured on
    such CPUs, so it stays off there too (`linear="packed"` forces it).
    """
    from tbr.models import cpu_has_amx

    return kind(model) is not None and cpu_has_amx()


def _onednn(m: torch.nn.Linear, rows: int, probe: Probe) -> Forward | None:
    packed, out = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows), m.out_features

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, m.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], out)

    # one packed weight serves any row count: check the hint and a single row
    return forward if probe(forward, m, rows) and probe(forward, m, 1) else None


def _mkl_linear(x: torch.Tensor, packed: torch.Tensor, m: torch.nn.Linear, rows: int) -> torch.Tensor:
    return torch.ops.mkl._mkl_linear(x, packed, m.weight, m.bias, rows)


def _mkl(m: torch.nn.Linear, rows: int, probe: Probe) -> Forward | None:
    if rows < MKL_MIN_ROWS:
        return None
    weight, bias = m.weight.detach(), m.bias
    packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)

    def forward(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        # a prefill (several tokens a row), or too few rows left to be worth the padding
        if x.dim() != 3 or x.shape[1] != 1 or n > rows or n < rows * PAD_ABOVE:
            return F.linear(x, weight, bias)
        flat = x.reshape(n, -1)
        if n < rows:
            flat = torch.cat([flat, flat.new_zeros(rows - n, flat.shape[1])])
        return _mkl_linear(flat, packed, m, rows)[:n].reshape(n, 1, -1)

    # e.g. one row: plain F.linear takes MKL's GEMV there, which rounds otherwise
    return forward if probe(forward, m, rows) else None


def _same_as_plain(forward: Forward, m: torch.nn.Linear, rows: int) -> bool:
    """A packed kernel that blocks its sums differently rounds differently, whatever the input: one
    seeded probe of a decode step's shape (rows × 1 token) tells whether it matches F.linear here."""
    x = torch.randn(rows, 1, m.in_features, generator=torch.Generator().manual_seed(0))
    x = x.to(m.weight.dtype)
    return torch.equal(forward(x), F.linear(x, m.weight, m.bias))


@contextmanager
def packed_linears(model: Any, rows: int) -> Iterator[int]:
    """Every plain `nn.Linear` of `model` runs on a packed copy of its weight inside the block, where
    the packed kernel gives F.linear's numbers bit for bit on this CPU (checked once per weight shape
    and row count); yields how many were packed. `rows`: the batch's row count (the packing hint)."""
    make = {"onednn": _onednn, "mkl": _mkl}.get(kind(model) or "")
    dtype = model.dtype if make else None
    patched: list[torch.nn.Module] = []
    same: dict[tuple[int, int, bool, int], bool] = {}  # (in, out, bias, rows) -> packed equals plain

    def probe(fwd: Forward, m: torch.nn.Linear, n: int) -> bool:
        key = (m.in_features, m.out_features, m.bias is not None, n)
        if key not in same:
            same[key] = _same_as_plain(fwd, m, n)
        return same[key]

    try:
        if make:
            with torch.no_grad():
                for m in model.modules():
                    # subclasses (LoRA wrappers, quantised layers) keep their own forward
                    if type(m) is not torch.nn.Linear or m.weight.dtype != dtype:
                        continue
                    fwd = make(m, max(1, rows), probe)
                    if fwd is not None:
                        m.forward = fwd
                        patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward  # the instance attribute: the class's forward is back
