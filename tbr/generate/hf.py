"""Batched generation with Hugging Face transformers (the default backend).

Where the time goes on a CPU (measured in benchmarks/README.md, "Generation"), and what we do about it:
  * batch size: a decode step reads all weights once (~540 MB fp32 for SmolLM2) and then costs a
    little per row, so bigger batches are nearly free. Per-step CPU time on 1 core was
    B=16 202 ms, B=32 272 ms, B=64 477 ms. Batch 32 vs 16 gave 1.33x the tokens per CPU-second;
    batch 32 was 1.48x lm-eval's HF backend at batch 16;
  * finished rows: `model.generate` keeps decoding every row until the *last* one is done. Our loop
    (a thin wrapper around the model's forward and its `DynamicCache`) drops a row from the batch and
    from the cache the step it finishes, and hands it to `on_result` at once. This pays when answers
    end early (short-answer prompts: see the README). On XSTest at 128 tokens almost every answer
    runs to the limit, and there it is on par with `model.generate` (1.04x, noise). Greedy outputs
    are identical to `model.generate` at the same dtype (benchmark and tests);
  * padding: prompts are sorted by length, so a batch of neighbours pads little (left padding, so new
    tokens follow each prompt directly);
  * dtype: bf16 only where the CPU has native bf16 (avx512_bf16/AMX). Emulated bf16 was 3-4x slower
    than fp32 on an AVX2-only CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from tbr.errors import ConfigError
from tbr.generate.base import Conversation, OnResult, SamplingParams, check_format, cut_at_stop, render_text
from tbr.models import ModelRef, load


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        model: str | ModelRef,
        *,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 16,
        progress: bool = True,
        loaded: tuple[Any, Any, ModelRef] | None = None,
    ):
        self.model, self.tokenizer, self.ref = loaded or load(model, dtype=dtype, device=device)
        self.model_id = self.ref.name
        self.weights_hash = self.ref.weights_hash
        self.batch_size = batch_size
        self.progress = progress
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        eos = self.model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def render(self, conv: Conversation, fmt: str) -> str:
        if fmt != "chat":
            return render_text(conv, fmt)
        if not self.tokenizer.chat_template:
            raise ConfigError(f"{self.model_id} has no chat template; use the alpaca or raw format")
        return self.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        fmt: str = "chat",
        on_result: OnResult | None = None,
    ) -> list[str]:
        check_format(fmt)
        if params.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        if not conversations:
            return []
        texts = [self.render(c, fmt) for c in conversations]
        # Chat templates already contain the special tokens; the other formats get the usual BOS, the
        # same way TRL tokenizes prompt-completion data during training.
        add_special = fmt != "chat"
        ids = self.tokenizer(texts, add_special_tokens=add_special)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up early
        out: list[str | None] = [None] * len(texts)
        bar = tqdm(
            total=len(texts), desc=f"generate [{self.model_id}]", disable=not self.progress, unit="prompt"
        )
        # One generator for the whole call: sampled answers depend on the seed and the batching only.
        gen = torch.Generator(device=self.model.device).manual_seed(params.seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for row, tokens in self.decode([ids[i] for i in idx], params, gen):
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                text = (cut_at_stop(text, params.stop) if params.stop else text).strip()
                out[idx[row]] = text
                if on_result:
                    on_result(idx[row], text)
                bar.update(1)
        bar.close()
        return [t or "" for t in out]

    @torch.inference_mode()
    def decode(
        self, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator | None = None
    ) -> Iterator[tuple[int, list[int]]]:
        """Decode one batch of token-id prompts; yield (row, new token ids) as each row finishes.

        The returned ids include the EOS token when the row stopped at one (it decodes to nothing with
        skip_special_tokens). Rows are dropped from the batch and the KV cache as soon as they finish.
        """
        from transformers import DynamicCache

        dev = self.model.device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        # Same positions as model.generate: count real tokens only, so left padding changes nothing.
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        eos = torch.tensor(self.eos_ids, device=dev)
        rows = list(range(len(prompts)))  # batch position -> caller's row
        new: list[list[int]] = [[] for _ in prompts]
        warp = _warpers(params)
        # A stop string of n characters spans at most n tokens (plus a partial one on each side).
        window = max((len(s) for s in params.stop), default=0) + 2
        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            logits_to_keep=1,
        ).logits[:, -1, :]
        last_pos = pos[:, -1]
        for step in range(params.max_new_tokens):
            if warp is None:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(warp(None, logits.float()), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            done = torch.isin(nxt, eos)
            for b, tok in enumerate(nxt.tolist()):
                new[rows[b]].append(tok)
            if params.stop:  # stop strings may span tokens, so look at the decoded tail of each row
                for b in range(len(rows)):
                    tail = self.tokenizer.decode(new[rows[b]][-window:], skip_special_tokens=True)
                    if any(s and s in tail for s in params.stop):
                        done[b] = True
            if step == params.max_new_tokens - 1:
                done[:] = True
            if done.any():
                for b in done.nonzero().flatten().tolist():
                    yield rows[b], new[rows[b]]
                keep = (~done).nonzero().flatten()
                if len(keep) == 0:
                    return
                # Drop finished rows: the next steps cost only what the live rows need.
                cache.reorder_cache(keep)
                rows = [rows[b] for b in keep.tolist()]
                nxt, mask, last_pos = nxt[keep], mask[keep], last_pos[keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            last_pos = last_pos + 1
            logits = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                past_key_values=cache,
            ).logits[:, -1, :]


def _warpers(params: SamplingParams) -> Any:
    """transformers' own temperature / top-p warpers for sampling; None means greedy (argmax)."""
    if params.greedy:
        return None
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warp = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
    if params.top_p < 1.0:
        warp.append(TopPLogitsWarper(params.top_p))
    return warp
