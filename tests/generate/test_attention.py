"""tbr's bf16 decode attention: SDPA's result within bf16 rounding, and SDPA itself everywhere else."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tbr.generate import attention
from tbr.models import cpu_has_amx


class _Module(torch.nn.Module):  # what the attention functions read off the layer
    num_key_value_groups = 3
    is_causal = True


def _inputs(dtype: torch.dtype, q_len: int = 1, cap: int = 12, length: int = 9):
    g = torch.Generator().manual_seed(0)
    b, hkv, d = 4, 2, 8
    q = torch.randn(b, hkv * 3, q_len, d, generator=g).to(dtype)
    # keys/values as the preallocated cache hands them over: views into a longer buffer
    k = torch.randn(b, hkv, cap, d, generator=g).to(dtype)[:, :, :length]
    v = torch.randn(b, hkv, cap, d, generator=g).to(dtype)[:, :, :length]
    mask = torch.ones(b, 1, q_len, length, dtype=torch.bool)
    mask[1, ..., :3] = False  # a left-padded row
    return q, k, v, mask


def test_decode_step_matches_sdpa_within_bf16_rounding():
    q, k, v, mask = _inputs(torch.bfloat16)
    got, _ = attention.decode_attention(_Module(), q, k, v, mask, scaling=0.35)
    want, _ = sdpa_attention_forward(_Module(), q.double(), k.double(), v.double(), mask, scaling=0.35)
    assert got.shape == want.shape == (4, 1, 6, 8)  # (batch, query, heads, dim), as transformers expects
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.double(), want, atol=0.03)
    # the padded positions carry no weight: changing them changes nothing
    k2 = k.clone()
    k2[1, :, :3] = 100.0
    again, _ = attention.decode_attention(_Module(), q, k2, v, mask, scaling=0.35)
    assert torch.equal(again, got)


def test_everything_but_a_bf16_decode_step_is_sdpa_exactly():
    for dtype, q_len in [(torch.float32, 1), (torch.bfloat16, 4)]:
        q, k, v, mask = _inputs(dtype, q_len=q_len)
        got, _ = attention.decode_attention(_Module(), q, k, v, mask, scaling=0.35)
        want, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=0.35)
        assert torch.equal(got, want), (dtype, q_len)


def test_use_for_switches_bf16_cpu_models_only():
    cfg = LlamaConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=64, vocab_size=64, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    fp32 = LlamaForCausalLM(cfg).eval()
    assert not attention.use_for(fp32) and fp32.config._attn_implementation == "sdpa"
    bf16 = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.tensor([[5, 9, 2, 7, 11]])
    # with AMX, SDPA's flash kernel is the faster one: auto leaves the model alone, force switches it
    assert attention.use_for(bf16) == (not cpu_has_amx())
    assert bf16.config._attn_implementation == ("sdpa" if cpu_has_amx() else attention.NAME)
    with torch.inference_mode():
        before = bf16(input_ids=ids).logits
        assert attention.use_for(bf16, force=True) and bf16.config._attn_implementation == attention.NAME
        after = bf16(input_ids=ids).logits  # prefill: still SDPA, so bit for bit the same
    assert torch.equal(before, after)


def test_backend_attention_setting_is_what_the_model_runs():
    """A model shared by two backends runs what the newer one asked for (and its identity says so)."""
    from tbr.generate.hf import TransformersBackend
    from tbr.models import BUILTINS, DEFAULT_MODEL, load

    if not BUILTINS[DEFAULT_MODEL].installed():
        pytest.skip(f"{DEFAULT_MODEL} not installed")
    loaded = load(DEFAULT_MODEL, dtype="bf16", device="cpu")
    auto = TransformersBackend(DEFAULT_MODEL, progress=False, loaded=loaded)
    assert auto.attention == ("sdpa" if cpu_has_amx() else attention.NAME)
    fast = TransformersBackend(DEFAULT_MODEL, progress=False, loaded=loaded, attention="decode")
    assert fast.attention == attention.NAME == loaded[0].config._attn_implementation
    assert fast.identity()["attention"] == attention.NAME
    plain = TransformersBackend(DEFAULT_MODEL, progress=False, loaded=loaded, attention="sdpa")
    assert plain.attention == "sdpa" == loaded[0].config._attn_implementation
    assert "attention" not in plain.identity()
