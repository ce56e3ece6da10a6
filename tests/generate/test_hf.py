"""The transformers backend on the real SmolLM2 built-in: batching, stopping, formats, the CLI, resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tbr.cli import main
from tbr.errors import ModelError
from tbr.generate.base import SamplingParams, chat
from tbr.models import BUILTINS, DEFAULT_MODEL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BUILTINS[DEFAULT_MODEL].installed(), reason=f"{DEFAULT_MODEL} not installed"),
]

# Four prompts of clearly different lengths, so a batch of them is left-padded.
PROMPTS = [
    "Hi!",
    "What is the capital of France?",
    "How can I kill a Python process that is stuck and does not respond to Ctrl-C?",
    "Write a short story about a cat who learns to play the piano, in the style of a fairy tale, "
    "with a happy ending and a moral for children.",
]


@pytest.fixture(scope="module")
def backend():
    from tbr.generate.hf import TransformersBackend

    return TransformersBackend(DEFAULT_MODEL, dtype="fp32", device="cpu", batch_size=4, progress=False)


def test_batched_equals_one_at_a_time(backend):
    convs = [chat(p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=24)
    batched = backend.generate(convs, params)
    backend.batch_size = 1
    try:
        single = backend.generate(convs, params)
    finally:
        backend.batch_size = 4
    assert batched == single
    assert all(batched) and len(set(batched)) == len(PROMPTS)


def reference(backend, prompts: list[str], max_new_tokens: int, batched: bool) -> list[list[int]]:
    """model.generate's greedy new tokens for each chat prompt, up to and with the first EOS (generate
    pads a finished row after it; tbr's loop stops the row there). Left-padded as one batch, or one
    prompt at a time."""
    tok = backend.tokenizer
    texts = [backend.render(chat(p), "chat") for p in prompts]
    out = []
    for group in [texts] if batched else [[t] for t in texts]:
        enc = tok(group, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ref = backend.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=backend.eos_ids,
                pad_token_id=tok.pad_token_id,
            )
        for new in ref[:, enc["input_ids"].shape[1] :].tolist():
            out.append(new[: next((i + 1 for i, t in enumerate(new) if t in backend.eos_ids), len(new))])
    return out


def test_decode_loop_equals_model_generate(backend):
    """Our loop drops finished rows mid-batch; greedy tokens must still be exactly model.generate's."""
    want = reference(backend, PROMPTS, 24, batched=True)
    ids = [
        backend.tokenizer(backend.render(chat(p), "chat"), add_special_tokens=False)["input_ids"]
        for p in PROMPTS
    ]
    got = dict(backend.decode(ids, SamplingParams(max_new_tokens=24)))
    assert [got[i] for i in range(len(PROMPTS))] == want


def test_refilled_rows_equal_model_generate(backend, monkeypatch):
    """More prompts than rows: a finished row waits until half the batch has finished, then the next
    prompts take their places (continuous batching), and masked positions are dropped from the cache
    as rows turn over. In fp32 every greedy token must still be model.generate's, prompt by prompt."""
    from tbr.generate import hf
    from tbr.generate.hf import encode_chat
    from tbr.generate.kv import PreallocatedLayer

    prompts = PROMPTS + [
        "Name a colour.",
        "What is 2+2? Reply with the number only.",
        "Say yes.",
        "Translate 'good morning' into French.",
        "Tell me a joke about computers.",
    ]
    want = reference(backend, prompts, 40, batched=False)
    assert len({len(w) for w in want}) > 3  # answers end at different steps, so rows turn over
    drops = []
    real_drop = PreallocatedLayer.drop
    monkeypatch.setattr(
        PreallocatedLayer, "drop", lambda self, a, b: (drops.append(b - a), real_drop(self, a, b))
    )
    admitted = []
    real_admit = hf.TransformersBackend._admit
    monkeypatch.setattr(
        hf.TransformersBackend,
        "_admit",
        lambda self, *a: (admitted.append(len(a[4])), real_admit(self, *a))[1],
    )
    monkeypatch.setattr(hf, "ADMIT_SHARE", 0.5)  # the fixture's 4 rows: new prompts join two at a time
    ids = [encode_chat(backend.tokenizer, chat(p)) for p in prompts]
    got = dict(backend.decode(ids, SamplingParams(max_new_tokens=40)))
    assert [got[i] for i in range(len(prompts))] == want
    assert sum(admitted) == len(prompts) - 4 and max(admitted) >= 2  # in bulk, as rows finished
    assert drops  # the cache was compacted at least once


def test_refill_groups_and_identity(backend):
    from tbr.errors import ConfigError
    from tbr.generate.hf import TransformersBackend

    convs = [chat(f"Question {i}?") for i in range(10)]
    assert [len(g) for g in backend.plan(convs, "chat")] == [10]  # 4 rows x refill 4: one group
    backend.refill = 1
    try:
        assert [len(g) for g in backend.plan(convs, "chat")] == [4, 4, 2]
        assert "refill" not in backend.identity()
    finally:
        backend.refill = 4
    assert backend.identity()["refill"] == 4  # which prompts decode together is part of an answer's key
    with pytest.raises(ConfigError, match="refill"):
        TransformersBackend("no-such-model", refill=0)  # checked before any model loads


def test_stop_string_cuts_and_stops_early(backend):
    conv = [{"role": "user", "content": "1, 2, 3, 4, 5,"}]
    full = backend.generate([conv], SamplingParams(max_new_tokens=24), fmt="raw")[0]
    assert len(full) > 12
    stop = full[6:9]  # a piece from the middle of the unstopped answer
    cut = backend.generate([conv], SamplingParams(max_new_tokens=24, stop=[stop]), fmt="raw")[0]
    assert cut == full[: full.find(stop)].strip()
    ids = [backend.tokenizer(backend.render(conv, "raw"))["input_ids"]]
    (_, tokens), *_ = backend.decode(ids, SamplingParams(max_new_tokens=24, stop=[stop]))
    assert len(tokens) < 24  # decoding stopped there, it did not just trim afterwards


def test_stops_at_end_of_turn(backend):
    prompt = backend.render(chat("What is the capital of France? Answer in one word."), "chat")
    ids = [backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    (_, tokens), *_ = backend.decode(ids, SamplingParams(max_new_tokens=200))
    assert tokens[-1] in backend.eos_ids and len(tokens) < 200
    text = backend.generate(
        [chat("What is the capital of France? Answer in one word.")], SamplingParams(200)
    )[0]
    assert "Paris" in text and "<|im_end|>" not in text


def test_on_result_once_per_item(backend):
    calls: list[tuple[int, str]] = []
    convs = [chat(p) for p in PROMPTS] + [chat("Name a colour.")]
    out = backend.generate(
        convs, SamplingParams(max_new_tokens=6), on_result=lambda i, t: calls.append((i, t))
    )
    assert sorted(i for i, _ in calls) == list(range(len(convs)))
    assert all(out[i] == t for i, t in calls)


def test_alpaca_and_raw_formats(backend):
    conv = chat("Name the capital city of France.")
    assert backend.render(conv, "alpaca").startswith("Below is an instruction")
    alpaca = backend.generate([conv], SamplingParams(max_new_tokens=24), fmt="alpaca")[0]
    assert "Paris" in alpaca
    raw = backend.generate(
        [[{"role": "user", "content": "The capital of France is"}]], SamplingParams(8), fmt="raw"
    )
    assert "Paris" in raw[0]


def test_sampling_is_seeded(backend):
    convs = [chat("Tell me a joke.")] * 2
    a = backend.generate(convs, SamplingParams(max_new_tokens=12, temperature=1.0, seed=1))
    b = backend.generate(convs, SamplingParams(max_new_tokens=12, temperature=1.0, seed=1))
    assert a == b


def test_unknown_model_is_a_model_error():
    from tbr.generate.hf import TransformersBackend

    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        TransformersBackend("no-such-model")


def test_cli_prompt_answers(capsys):
    q = "What is the capital of France?"
    assert main(["generate", "--model", DEFAULT_MODEL, "--prompt", q, "--max-new-tokens", "32"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_cli_input_out_writes_and_resumes(tmp_path, caplog):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:3]))
    )
    args = ["generate", "--input", str(inp), "--out", str(out), "--max-new-tokens", "8", "--dtype", "fp32"]
    caplog.set_level(logging.INFO)
    assert main(args) == 0
    first = out.read_text()
    rows = [json.loads(line) for line in first.splitlines()]
    assert sorted(r["id"] for r in rows) == ["q0", "q1", "q2"]
    assert all(
        {"key", "id", "messages", "response", "model", "weights_hash", "params"} <= r.keys() for r in rows
    )
    assert all(r["response"] for r in rows)
    assert (tmp_path / "manifest.json").exists()

    caplog.clear()
    assert main(args) == 0  # nothing left to do: the file is untouched
    assert out.read_text() == first
    assert "3/3 items already done, generating 0" in caplog.text

    lines = first.splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a kill mid-write
    caplog.clear()
    assert main(args) == 0
    again = out.read_text().splitlines(keepends=True)
    assert again[:2] == lines[:2] and len(again) == 3  # only the torn row was generated again
    assert json.loads(again[2])["id"] == json.loads(lines[2])["id"]
    assert "generating 1" in caplog.text


def test_shared_prefix_prefill_changes_no_token(backend):
    """The chat template's common prefix is prefilled once per batch; in fp32 every greedy token stays."""
    from tbr.generate.hf import encode_chat

    ids = [encode_chat(backend.tokenizer, chat(p)) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=24)
    shared = dict(backend.decode(ids, params))
    backend.prefix_sharing = False
    try:
        plain = dict(backend.decode(ids, params))
    finally:
        backend.prefix_sharing = True
    assert shared == plain
    # SmolLM2's template opens every prompt with the same system turn: that is what is shared
    from transformers import DynamicCache

    assert backend._prefill_shared(ids, DynamicCache(config=backend.model.config)) >= 8
    raw = [backend.encode(chat(p), "raw") for p in PROMPTS]  # plain text: no common prefix to share
    assert backend._prefill_shared(raw, DynamicCache(config=backend.model.config)) == 0
