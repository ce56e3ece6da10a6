"""Packed linear layers: the same numbers as F.linear, scoped to one batch, and only where usable."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tbr.errors import ConfigError
from tbr.generate import SamplingParams, packed
from tbr.generate.hf import TransformersBackend
from tbr.models import ModelRef, cpu_has_amx


def _tiny(dtype: torch.dtype) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, vocab_size=128, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def _word_tokenizer():
    """Words w0..w127 as token ids 0..127 (w0 pads, w1 ends), for the tiny model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(128)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="w0", eos_token="w1")


def _native_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _mkl() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


def _expected(dtype: torch.dtype) -> bool:
    """Whether the packed path exists: bf16 where oneDNN has it natively, fp32 where torch has MKL."""
    return {torch.bfloat16: _native_bf16(), torch.float32: _mkl()}.get(dtype, False)


def _pays(dtype: torch.dtype) -> bool:
    """Whether `auto` takes it: only with AMX (bf16 on avx512_bf16 without AMX was slower; fp32 packing
    is measured on AMX only)."""
    return _expected(dtype) and cpu_has_amx()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_logits_equal_plain_and_are_undone_after_the_block(dtype):
    model = _tiny(dtype)
    ids = torch.tensor([[3, 17, 5, 99, 42, 8], [1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        step = model(input_ids=ids[:, :1]).logits
        step1 = model(input_ids=ids[:1, :1]).logits  # one row: its own GEMM shape, so its own rounding
        with packed.packed_linears(model, rows=2) as n:
            inside = model(input_ids=ids).logits
            at_hint = model(input_ids=ids[:, :1]).logits  # 2 rows: the packed row count
            one_row = model(input_ids=ids[:1, :1]).logits  # another row count than the hint
        after = model(input_ids=ids).logits
    # at most 7 projections per layer + the LM head, where the packed path exists on this CPU (shapes
    # whose packed kernel rounds otherwise stay plain: on the AMX Xeon measured, none); none elsewhere
    assert n <= 2 * 7 + 1 and (n == 0 or _expected(dtype))
    assert (packed.kind(model) is not None) == _expected(dtype)
    assert packed.usable(model) == _pays(dtype)
    assert torch.equal(inside, plain)
    assert torch.equal(at_hint, step)
    assert torch.equal(one_row, step1)
    assert torch.equal(after, plain)
    assert all("forward" not in m.__dict__ for m in model.modules())  # the class's forward is back


@pytest.mark.skipif(not _mkl(), reason="this torch has no MKL packed SGEMM")
def test_fp32_steps_with_fewer_rows_are_padded_to_the_packed_count_then_plain(monkeypatch):
    """MKL's packed weight serves one row count: a decode step that lost a row is padded back up to it
    (the live rows then get the full batch's numbers); one that lost more than 1/8 runs F.linear, and so
    does a batch too small for the pack to pay."""
    model = _tiny(torch.float32)
    calls: list[int] = []  # rows of each packed call
    real = packed._mkl_linear
    monkeypatch.setattr(packed, "_mkl_linear", lambda x, *a: calls.append(len(x)) or real(x, *a))
    step = torch.arange(3, 3 + 16 * 7, 7)[:, None]  # 16 rows, one token each
    with torch.inference_mode():
        full = model(input_ids=step).logits
        eight = model(input_ids=step[:8]).logits
        prefill = model(input_ids=step.T[:, :4]).logits
        with packed.packed_linears(model, rows=packed.MKL_MIN_ROWS - 1) as none:
            assert none == 0  # a small batch stays plain: the pack would not pay
        with packed.packed_linears(model, rows=16) as n:
            assert n <= 2 * 7 + 1  # all of them on the AMX Xeon measured
            if n == 0:
                pytest.skip("MKL's packed kernel rounds otherwise than F.linear on every shape on this CPU")
            calls.clear()  # (the probes)
            at_hint = model(input_ids=step).logits
            fourteen = model(input_ids=step[:14]).logits  # 14 of 16: padded to 16
            assert calls == [16] * 2 * n
            few = model(input_ids=step[:8]).logits  # 8 of 16: plain
            several = model(input_ids=step.T[:, :4]).logits  # several tokens a row: plain
            assert calls == [16] * 2 * n
    assert torch.equal(at_hint, full)
    assert torch.equal(fourteen, full[:14])
    assert torch.equal(few, eight)
    assert torch.equal(several, prefill)


def test_weights_changed_between_batches_are_used():
    """Packing is per batch: a model updated between calls (a training loop) never decodes stale copies."""
    model = _tiny(torch.bfloat16)
    ids = torch.tensor([[3, 17, 5]])
    with torch.inference_mode():
        with packed.packed_linears(model, rows=1):
            before = model(input_ids=ids).logits
        with torch.no_grad():
            model.lm_head.weight.mul_(2.0)  # tied to the embeddings in neither: a real change
        with packed.packed_linears(model, rows=1):
            changed = model(input_ids=ids).logits
    assert not torch.equal(before, changed)


def test_a_packed_kernel_that_rounds_otherwise_is_not_used(monkeypatch):
    model = _tiny(torch.bfloat16)
    monkeypatch.setattr(packed, "kind", lambda m: "onednn")  # as on a CPU with native bf16

    def off_by_a_bit(m, rows, probe):  # a stand-in kernel: the right shape, other rounding
        def forward(x):
            return torch.nn.functional.linear(x, m.weight, m.bias) * (1 + 2**-7)

        return forward if probe(forward, m, rows) else None

    monkeypatch.setattr(packed, "_onednn", off_by_a_bit)
    ids = torch.tensor([[3, 17, 5]])
    with torch.inference_mode(), packed.packed_linears(model, rows=1) as n:
        assert n == 0
        assert torch.equal(model(input_ids=ids).logits, _tiny(model.dtype)(input_ids=ids).logits)


def test_other_dtypes_are_never_packed():
    model = _tiny(torch.float16)
    assert not packed.usable(model)
    with packed.packed_linears(model, rows=4) as n:
        assert n == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backend_records_its_linear_setting_and_greedy_answers_match(tmp_path, dtype):
    tok = _word_tokenizer()
    model = _tiny(dtype)
    model.generation_config.eos_token_id = 1
    ref = ModelRef(name="tiny", path=str(tmp_path), weights_hash="0" * 16)
    convs = [
        [{"role": "user", "content": " ".join(f"w{(7 * i + j) % 120 + 2}" for j in range(5))}]
        for i in range(16)  # 16 rows: enough for the fp32 (MKL) path to pack
    ]
    # "packed" forces the packed path (the benchmark's row where auto stays plain); it is refused
    # where the path does not exist
    if not _expected(dtype):
        with pytest.raises(ConfigError, match="linear='packed' needs a CPU model"):
            TransformersBackend("tiny", progress=False, loaded=(model, tok, ref), linear="packed")
    out = {}
    for linear in ("plain", "auto", "packed") if _expected(dtype) else ("plain", "auto"):
        be = TransformersBackend(
            "tiny", batch_size=16, progress=False, loaded=(model, tok, ref), linear=linear
        )
        want = {"plain": "plain", "packed": "packed", "auto": "packed" if _pays(dtype) else "plain"}
        assert be.manifest()["linear"] == want[linear]
        out[linear] = be.generate(convs, SamplingParams(max_new_tokens=6), fmt="raw")
    assert all(o == out["plain"] for o in out.values())
