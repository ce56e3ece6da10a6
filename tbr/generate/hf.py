"""Batched generation with Hugging Face transformers (the default backend).

Where the time goes on a CPU, and what we do about it:
  * padding: prompts are sorted by length so each batch pads little (left padding for decoding);
  * finished rows: `model.generate` keeps decoding rows that already hit EOS until the whole batch
    is done; sorting by prompt length does not fix that, so keep batches moderate (16);
  * dtype: bf16 only where the CPU has native bf16 (avx512_bf16/AMX) — emulated bf16 is slower.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        texts = [self.render(c, fmt) for c in conversations]
        # Chat templates already contain the special tokens; the other formats get the usual BOS, the
        # same way TRL tokenizes prompt-completion data during training.
        add_special = fmt != "chat"
        lengths = [len(self.tokenizer(t, add_special_tokens=add_special)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: OOM shows up early
        out: list[str | None] = [None] * len(texts)
        bar = tqdm(
            total=len(texts), desc=f"generate [{self.model_id}]", disable=not self.progress, unit="prompt"
        )
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, text in zip(
                idx, self._generate_batch([texts[i] for i in idx], params, add_special), strict=True
            ):
                out[i] = text
                if on_result:
                    on_result(i, text)
            bar.update(len(idx))
        bar.close()
        return [t or "" for t in out]

    @torch.inference_mode()
    def _generate_batch(self, texts: list[str], params: SamplingParams, add_special: bool) -> list[str]:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        enc = enc.to(self.model.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(params.seed)
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        gen = self.model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stop(t, params.stop).strip() if params.stop else t.strip() for t in decoded]
