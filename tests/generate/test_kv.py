"""The preallocated KV cache holds exactly what transformers' DynamicCache holds, step by step."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig
from transformers.cache_utils import DynamicLayer

from tbr.generate.kv import PreallocatedLayer, preallocated_cache


def _steps(layer, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A prompt of 5 positions, 3 decode steps, rows 0 and 2 kept, 2 more steps (and one past capacity)."""
    seen = []
    b = 3
    for i, n in enumerate([5, 1, 1, 1, "keep", 1, 1]):
        if n == "keep":
            layer.reorder_cache(torch.tensor([0, 2]))
            b = 2
            continue
        k, v = torch.randn(b, 2, n, 4, generator=gen), torch.randn(b, 2, n, 4, generator=gen)
        seen.append(tuple(t.clone() for t in layer.update(k, v)))
        assert layer.get_seq_length() == seen[-1][0].shape[-2], i
    return seen


def test_same_keys_and_values_as_dynamic_layer():
    want = _steps(DynamicLayer(), torch.Generator().manual_seed(0))
    got = _steps(PreallocatedLayer(capacity=8), torch.Generator().manual_seed(0))  # 10 positions: grows once
    assert len(got) == len(want)
    for (gk, gv), (wk, wv) in zip(got, want, strict=True):
        assert torch.equal(gk, wk) and torch.equal(gv, wv)


def test_a_row_is_rewritten_and_masked_positions_drop_out():
    """Continuous batching writes a new prompt into a finished row, and later drops the positions that
    no row reads: the others move down, in order, in every row."""
    gen = torch.Generator().manual_seed(0)
    layer = PreallocatedLayer(capacity=12)
    k, v = torch.randn(2, 2, 9, 4, generator=gen), torch.randn(2, 2, 9, 4, generator=gen)
    layer.update(k, v)
    nk, nv = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    layer.write_row(1, 6, nk, nv)  # row 1 now ends in a 3-token prompt at positions 6..8
    assert torch.equal(layer.keys[1, :, 6:], nk) and torch.equal(layer.values[1, :, 6:], nv)
    assert torch.equal(layer.keys[0], k[0]) and torch.equal(layer.keys[1, :, :6], k[1, :, :6])
    layer.drop(2, 6)  # positions 2..5: masked in both rows
    assert layer.get_seq_length() == 5
    assert torch.equal(layer.keys[0], torch.cat([k[0, :, :2], k[0, :, 6:]], dim=1))
    assert torch.equal(layer.values[1], torch.cat([v[1, :, :2], nv], dim=1))
    step = torch.randn(2, 2, 1, 4, generator=gen), torch.randn(2, 2, 1, 4, generator=gen)
    keys, _ = layer.update(*step)  # decoding goes on right after the kept positions
    assert keys.shape[-2] == 6 and torch.equal(keys[:, :, 5:], step[0])


def test_cache_for_a_config_replaces_full_attention_layers_only():
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    cache = preallocated_cache(cfg, capacity=10)
    assert isinstance(cache, DynamicCache)
    assert [type(layer) for layer in cache.layers] == [PreallocatedLayer, PreallocatedLayer]


def test_unknown_kv_cache_is_a_config_error():
    from tbr.errors import ConfigError
    from tbr.generate.hf import TransformersBackend

    with pytest.raises(ConfigError, match="kv_cache"):  # checked before any model loads
        TransformersBackend("no-such-model", kv_cache="paged")
