"""A KV cache that is allocated once per batch and written in place.

transformers' `DynamicCache` grows by `torch.cat` every decode step: each step copies the whole cache of
every layer (for a 64-row SmolLM2 batch of ~170 tokens that is ~0.5 GB of copying per step; 17-31%
of a decode step in the profiler, 0-11% measured end to end: benchmarks/README.md, issue 14). A `StaticCache` avoids the copy but
attends over its full length from the first step on (padding masked, but computed). This layer does
neither: it allocates prompt + max_new_tokens positions once and hands attention a view of the
filled part only. Values and their order are the same as with `DynamicCache`, so are greedy outputs
(tests/generate/test_hf.py).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views into one buffer of `capacity` positions."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self._k is None:
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, d = key_states.shape
            self._k = key_states.new_empty(b, h, max(self.capacity, n), d)
            self._v = value_states.new_empty(
                b, value_states.shape[1], max(self.capacity, n), value_states.shape[-1]
            )
            self.is_initialized = True
        assert self._v is not None
        if self.length + n > self._k.shape[-2]:  # more steps than planned: grow (never in tbr's own loop)
            self._k = torch.cat([self._k, torch.empty_like(self._k)], dim=-2)
            self._v = torch.cat([self._v, torch.empty_like(self._v)], dim=-2)
        self._k[:, :, self.length : self.length + n] = key_states
        self._v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def write_row(self, row: int, at: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite one row's positions [at, at + n) with (heads, n, dim) keys and values: a new prompt
        taking a finished row's place (tbr.generate.hf, continuous batching)."""
        assert self._k is not None and self._v is not None
        n = keys.shape[-2]
        self._k[row, :, at : at + n] = keys
        self._v[row, :, at : at + n] = values

    def drop(self, start: int, end: int) -> None:
        """Remove positions [start, end) from every row, moving the later ones down (masked positions
        that no live row reads any more)."""
        assert self._k is not None and self._v is not None
        n = self.length - end
        self._k[:, :, start : start + n] = self._k[:, :, end : self.length].clone()
        self._v[:, :, start : start + n] = self._v[:, :, end : self.length].clone()
        self.length -= end - start
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        # Keep only these rows (finished rows leave the batch). One copy, not one per step.
        if self._k is not None and self._v is not None:
            self._k = self._k.index_select(0, beam_idx.to(self._k.device))
            self._v = self._v.index_select(0, beam_idx.to(self._v.device))
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


def preallocated_cache(config: Any, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers hold `capacity` positions in place.
    Other layer kinds (sliding windows, linear attention) keep transformers' own classes."""
    cache = DynamicCache(config=config)
    cache.layers = [
        PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache
