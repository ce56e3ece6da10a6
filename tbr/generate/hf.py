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
  * continuous batching: a dropped row would leave the batch smaller, and a step with few rows costs
    nearly what a full one does (the weights are read either way). So a planned group holds `refill`
    batches' worth of prompts, and its next prompts take finished rows' places once an eighth of the
    batch has finished (_decode, _admit; joining them one at a time cost a forward pass per join, more
    than it saved). After TBR training most answers are short refusals, and a batch otherwise
    spends most of its steps draining: a trained Qwen2.5-0.5B on 64 XSTest prompts ran 1.40x faster
    (docs/results.md, "Generation speed"). fp32 answers stay model.generate's (tests);
  * padding: prompts are sorted by length, so a batch of neighbours pads little (left padding, so new
    tokens follow each prompt directly). The batches are a function of the whole request list
    (plan()): in bf16, a greedy answer depends on which prompts share its batch, so the write-ahead
    cache reruns whole planned batches and a resumed run equals an uninterrupted one bit for bit;
  * chat turns cannot be forged: message contents are tokenized as text (split_special_tokens), and
    only the template around them yields special tokens (encode_chat);
  * KV cache: allocated once per batch for prompt + max_new_tokens and written in place
    (tbr.generate.kv). transformers' DynamicCache concatenates every step: 1.14x in bf16, 1.01x in
    fp32 end to end (benchmarks/README.md, issue 14);
  * shared prefix: every chat prompt opens with the same template text (SmolLM2's system turn is 24
    of ~40 tokens on XSTest); it is prefilled once per batch and copied into every row (_prefill_shared);
  * attention (bf16 on CPU without AMX): SDPA's flash kernel is slow for a one-token query; decode
    steps use two matmuls instead (tbr.generate.attention): 1.29x end to end. With AMX the flash kernel
    runs on the tiles and is the faster one, so it stays. Greedy picks use max().indices, which is
    argmax and 5x faster than bf16 argmax over a 49k vocabulary;
  * weights packed once per batch (tbr.generate.packed, on AMX CPUs): the GEMM library otherwise
    reorders every weight inside every call. bf16 through oneDNN 1.15-1.17x, fp32 through MKL's packed
    SGEMM (decode steps padded back to the packed row count while 7/8 of the rows live) 1.10-1.11x
    end to end. What is left is mostly the weight matmuls, near the core's peak, and attention;
  * dtype: bf16 only where the CPU has native bf16 (avx512_bf16/AMX). Emulated bf16 was 3-4x slower
    than fp32 on an AVX2-only CPU.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from tbr.errors import ConfigError, ModelError
from tbr.generate.attention import NAME as ATTENTION_NAME
from tbr.generate.attention import use_for
from tbr.generate.base import (
    DEFAULT_MAX_PROMPT_TOKENS,
    Conversation,
    OnResult,
    PromptTooLongError,
    SamplingParams,
    check_format,
    cut_at_stop,
    render_text,
)
from tbr.generate.kv import PreallocatedLayer, preallocated_cache
from tbr.generate.packed import kind as packed_kind
from tbr.generate.packed import packed_linears
from tbr.generate.packed import usable as packed_usable
from tbr.io import stable_hash
from tbr.models import ModelRef, eos_token_ids, load

# A shorter common prefix is not worth its extra forward pass (TransformersBackend._prefill_shared).
MIN_SHARED_PREFIX = 8
# Continuous batching (TransformersBackend._decode): new prompts join once this share of the batch has
# finished, and masked KV positions are dropped once they are this share of the cache.
ADMIT_SHARE = 1 / 8
COMPACT_SHARE = 1 / 8
# Stands in for each message's content while the template renders; no template or text contains it.
_SLOT = "\x00tbr-slot-{}\x00"


def _special_re(tokenizer: Any) -> re.Pattern[str]:
    """Every special token's text, longest first (so `<|im_start|>` wins over a prefix of it)."""
    specials = set(tokenizer.all_special_tokens)
    specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True) if t))


def encode_chat(tokenizer: Any, conv: Conversation) -> list[int]:
    """The chat template's token ids, with every message content tokenized as plain text.

    Rendering to one string and tokenizing it would turn chat markers inside a prompt into real turn
    boundaries (a prompt could open its own system turn). So the template is rendered with a slot in
    place of each content, and split at the template's own special tokens, which become token ids;
    the text between them (template text with the contents filled in) is tokenized with special
    tokens off. A tokenizer splits at special tokens first anyway, so ordinary prompts get the very
    ids the plain rendering gives. The result must spell the plain rendering's text, or we refuse.
    """
    slots = [{**m, "content": _SLOT.format(j)} for j, m in enumerate(conv)]
    framed = tokenizer.apply_chat_template(slots, tokenize=False, add_generation_prompt=True)
    plain = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    special = _special_re(tokenizer)
    for contents in ([m["content"] for m in conv], [m["content"].strip() for m in conv]):
        ids: list[int] = []
        text, pos = "", 0
        for m in [*special.finditer(framed), None]:
            chunk = framed[pos : m.start() if m else len(framed)]
            for j, content in enumerate(contents):
                chunk = chunk.replace(_SLOT.format(j), content)
            if chunk:
                ids += tokenizer(chunk, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            text += chunk
            if m:
                ids.append(tokenizer.convert_tokens_to_ids(m.group(0)))
                text += m.group(0)
                pos = m.end()
        if text == plain:
            return ids
    raise ModelError(
        "this chat template rewrites message contents, so tbr cannot keep them apart from its own "
        "markers; use --format alpaca or raw, or a model with a plain template"
    )


def check_template(tokenizer: Any, model_id: str) -> None:
    if not tokenizer.chat_template:
        raise ConfigError(f"{model_id} has no chat template; use the alpaca or raw format")


def encode_prompt(tokenizer: Any, conv: Conversation, fmt: str, model_id: str = "the model") -> list[int]:
    """Prompt token ids. Chat: the template's markers are special tokens, the contents plain text.
    Other formats: the usual BOS (as TRL tokenizes prompt-completion data in training) and the text
    as text. Shared with the llama.cpp backend, so both read the very same ids."""
    if fmt == "chat":
        check_template(tokenizer, model_id)
        return encode_chat(tokenizer, conv)
    text = render_text(conv, fmt)
    return tokenizer(text, add_special_tokens=True, split_special_tokens=True)["input_ids"]


def encode_prompts(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    fmt: str,
    max_tokens: int,
    model_id: str = "the model",
) -> list[list[int]]:
    check_format(fmt)
    ids = [encode_prompt(tokenizer, c, fmt, model_id) for c in conversations]
    for i, x in enumerate(ids):
        if len(x) > max_tokens:
            raise PromptTooLongError(i, len(x), max_tokens)
    return ids


def plan_batches(ids: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Batches as a function of the whole request list. Longest first, so running out of memory shows
    up early; ties keep list order."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [order[s : s + size] for s in range(0, len(order), size)]


def run_plan(
    ids: Sequence[Sequence[int]],
    plan: Sequence[Sequence[int]],
    params: SamplingParams,
    decode: Callable[[list[list[int]], int], Iterator[tuple[int, list[int]]]],
    tokenizer: Any,
    *,
    desc: str,
    progress: bool,
    on_result: OnResult | None,
) -> list[str]:
    """The loop the local backends share: each planned batch goes to `decode(prompts, seed)`, which
    yields (row, new token ids) as rows finish; texts are detokenised, cut at stop strings and handed
    to `on_result` at once. "" only for items outside `plan`."""
    out: list[str | None] = [None] * len(ids)
    bar = tqdm(total=sum(len(b) for b in plan), desc=desc, disable=not progress, unit="prompt")
    for idx in plan:
        # One seed per batch, from the seed and the batch's own prompts: a sampled answer does not
        # depend on which other batches this call runs (a resumed run runs fewer).
        seed = int(stable_hash([params.seed, [list(ids[i]) for i in idx]]), 16) % (2**63)
        for row, tokens in decode([list(ids[i]) for i in idx], seed):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            text = (cut_at_stop(text, params.stop) if params.stop else text).strip()
            out[idx[row]] = text
            if on_result:
                on_result(idx[row], text)
            bar.update(1)
    bar.close()
    return [t or "" for t in out]


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
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
        kv_cache: str = "preallocated",
        attention: str = "auto",
        prefix_sharing: bool = True,
        linear: str = "auto",
        refill: int = 4,
    ):
        # "dynamic" (transformers' DynamicCache) is kept for the benchmark's before/after row; both give
        # the same values, so it is not part of identity().
        if kv_cache not in ("preallocated", "dynamic"):
            raise ConfigError(f"kv_cache must be 'preallocated' or 'dynamic', got {kv_cache!r}")
        if attention not in ("auto", "sdpa", "decode"):
            raise ConfigError(f"attention must be 'auto', 'sdpa' or 'decode', got {attention!r}")
        if linear not in ("auto", "plain", "packed"):
            raise ConfigError(f"linear must be 'auto', 'plain' or 'packed', got {linear!r}")
        if refill < 1:
            raise ConfigError(f"refill must be at least 1, got {refill}")
        # A LoRA adapter is merged into its base for decoding: PEFT's wrapped layers cost two extra small
        # matmuls each and cannot take the packed path (tbr.generate.packed), and merged, a trained
        # Qwen2.5-0.5B answered 1.32x faster (docs/results.md, "Generation speed"). The merged weights
        # round W + BA once, so bf16 answers can differ from the unmerged model's: part of identity().
        self.model, self.tokenizer, self.ref = loaded or load(
            model, dtype=dtype, device=device, merge_adapter=True
        )
        self.merged = loaded is None and self.ref.adapter is not None
        # auto: bf16 decode steps on a CPU without AMX use tbr.generate.attention (the numerics of
        # transformers' eager attention; 1.29x end to end over SDPA's flash kernel there); everything else,
        # AMX CPUs included, stays SDPA. "decode" forces the two matmuls on any CPU (the benchmark's row).
        # A model shared with a backend that switched it is switched back when this one asks for SDPA.
        self.attention = "sdpa"
        if attention != "sdpa" and use_for(self.model, force=attention == "decode"):
            self.attention = ATTENTION_NAME
        elif self.model.config._attn_implementation == ATTENTION_NAME:
            self.model.set_attn_implementation("sdpa")
        self.prefix_sharing = prefix_sharing
        # auto: on a CPU with AMX, decode with weights packed once per batch (tbr.generate.packed: oneDNN
        # for bf16, MKL for fp32; F.linear's numbers, so not part of identity()); "packed" forces it
        # wherever the path exists (the benchmark's row on CPUs where auto leaves it off).
        if linear == "packed" and packed_kind(self.model) is None:
            raise ConfigError(
                "linear='packed' needs a CPU model in bf16 where oneDNN computes bf16 natively, or in fp32 with MKL"
            )
        self.linear = (
            "packed" if linear == "packed" or (linear == "auto" and packed_usable(self.model)) else "plain"
        )
        self.model_id = self.ref.name
        self.weights_hash = self.ref.weights_hash
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        # A planned group holds `refill` batches' worth of prompts that decode as one batch, finished rows
        # replaced from the group (_decode). Bigger groups waste fewer steps on a draining batch; a
        # group is also what a resumed run redoes whole (tbr.generate.cache), so keep it a few batches.
        self.refill = refill
        self.max_prompt_tokens = max_prompt_tokens
        self.progress = progress
        self.kv_cache = kv_cache
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        self.eos_ids = eos_token_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def identity(self) -> dict[str, Any]:
        # The batch size decides which prompts share a batch, and so (in bf16) the answers.
        return {
            "backend": self.name,
            "weights": self.weights_hash,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            # which prompts decode together (and so, in bf16, the answers)
            **({"refill": self.refill} if self.refill != 1 else {}),
            **({"merged_adapter": True} if self.merged else {}),
            # bf16 answers depend on the attention kernel's rounding; fp32 ones do not
            **({"attention": self.attention} if self.attention != "sdpa" else {}),
            **({} if self.prefix_sharing else {"prefix_sharing": False}),
        }

    def manifest(self) -> dict[str, Any]:
        return {
            **self.ref.manifest(),
            "backend": self.name,
            "dtype": self.dtype,
            "attention": self.attention,
            "prefix_sharing": self.prefix_sharing,
            "linear": self.linear,
            "refill": self.refill,
            "merged_adapter": self.merged,
        }

    def render(self, conv: Conversation, fmt: str) -> str:
        """The prompt as text (for display; generation uses encode())."""
        if fmt != "chat":
            return render_text(conv, fmt)
        self._check_template()
        return self.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)

    def _check_template(self) -> None:
        check_template(self.tokenizer, self.model_id)

    def encode(self, conv: Conversation, fmt: str) -> list[int]:
        return encode_prompt(self.tokenizer, conv, fmt, self.model_id)

    def _encode_all(self, conversations: Sequence[Conversation], fmt: str) -> list[list[int]]:
        return encode_prompts(self.tokenizer, conversations, fmt, self.max_prompt_tokens, self.model_id)

    def plan(self, conversations: Sequence[Conversation], fmt: str) -> list[list[int]]:
        return plan_batches(self._encode_all(conversations, fmt), self.batch_size * self.refill)

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        fmt: str = "chat",
        on_result: OnResult | None = None,
        batches: Sequence[Sequence[int]] | None = None,
    ) -> list[str]:
        if not conversations:
            return []
        ids = self._encode_all(conversations, fmt)
        dev = self.model.device

        def decode(prompts: list[list[int]], seed: int) -> Iterator[tuple[int, list[int]]]:
            return self.decode(prompts, params, torch.Generator(device=dev).manual_seed(seed))

        return run_plan(
            ids,
            batches if batches is not None else plan_batches(ids, self.batch_size * self.refill),
            params,
            decode,
            self.tokenizer,
            desc=f"generate [{self.model_id}]",
            progress=self.progress,
            on_result=on_result,
        )

    def _prefill_shared(self, prompts: list[list[int]], cache: Any, rows: int | None = None) -> int:
        """Prefill the common token prefix of `prompts` once and copy its KV into the first `rows` rows
        of `cache` (default: one row per prompt).

        Every chat prompt opens with the same template text (SmolLM2's system turn is 24 of ~40 tokens
        on XSTest), so a batch's prefill is half repeated work. The prefix is run as a batch of one and
        broadcast; the cache then holds [prefix][padding][rest of each prompt], which attention masks
        and positions make equal to the left-padded layout: in fp32 the greedy answers stay identical to
        `model.generate`'s (tests/generate/test_hf.py; benchmarks/generation.py counts them). Returns the
        prefix length (0: not worth it, or a cache kind this does not handle)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        n = min(len(os.path.commonprefix(prompts)), min(len(p) for p in prompts) - 1)
        # Full-attention layers only: a sliding window (a DynamicLayer subclass) counts positions itself.
        if n < MIN_SHARED_PREFIX or any(
            type(x) not in (DynamicLayer, PreallocatedLayer) for x in cache.layers
        ):
            return 0
        one = DynamicCache(config=self.model.config)
        self.model(input_ids=torch.tensor([prompts[0][:n]], device=self.model.device), past_key_values=one)
        b = len(prompts) if rows is None else rows
        for i, layer in enumerate(one.layers):
            k, v = layer.keys, layer.values
            cache.update(k.expand(b, *k.shape[1:]), v.expand(b, *v.shape[1:]), i)
        return n

    def decode(
        self, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator | None = None
    ) -> Iterator[tuple[int, list[int]]]:
        """Decode one planned group of token-id prompts; yield (row, new token ids) as each row finishes.

        At most `batch_size` rows decode at once. The returned ids include the EOS token when the row
        stopped at one (it decodes to nothing with skip_special_tokens). Finished rows are replaced by the
        group's next prompts, an eighth of the batch at a time (`_decode`).
        """
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: see _admit
        queue = deque(order)
        while queue:  # one pass, unless the cache cannot take new rows (then one batch per pass)
            first = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            if self.linear != "packed":
                yield from self._decode(prompts, first, queue, params, gen)
                continue
            with packed_linears(self.model, len(first)):
                yield from self._decode(prompts, first, queue, params, gen)

    @torch.inference_mode()
    def _decode(
        self,
        prompts: list[list[int]],
        first: list[int],
        queue: deque[int],
        params: SamplingParams,
        gen: torch.Generator | None,
    ) -> Iterator[tuple[int, list[int]]]:
        """Decode `first` (indices into `prompts`) as one batch; while `queue` holds prompts, rows that
        finish are replaced by the next ones, ADMIT_SHARE of the batch at a time (continuous batching),
        so the batch stays nearly full until the queue runs dry. Finished rows with nobody to replace
        them leave the batch and the KV cache.

        Why: a decode step reads every weight once whatever the row count, so a step with few live rows
        costs nearly what a full one does. Without refilling, every batch ends in a tail of such steps
        while its longest answers finish; after TBR training most answers are short refusals, and that
        tail is most of a batch (benchmarks/README.md, issue 14)."""
        from transformers import DynamicCache

        dev = self.model.device
        group = [prompts[i] for i in first] + [prompts[i] for i in queue]
        width = max(len(prompts[i]) for i in first)  # the longest prompt of the group: decode() sorted it
        # Allocated once for the whole answer: DynamicCache would copy itself every step (tbr.generate.kv).
        if self.kv_cache == "dynamic":
            cache = DynamicCache(config=self.model.config)
        else:
            cache = preallocated_cache(self.model.config, width + params.max_new_tokens + 1)
        # The chat template's system turn is the same in every prompt: prefill it once.
        shared = self._prefill_shared(group, cache, len(first)) if self.prefix_sharing else 0
        refill = all(type(x) is PreallocatedLayer for x in cache.layers)
        input_ids, mask, pos = _left_padded(
            [prompts[i] for i in first], shared, self.tokenizer.pad_token_id, dev
        )
        eos = self.eos_ids
        rows: list[int] = list(first)  # batch position -> caller's row
        new: dict[int, list[int]] = {i: [] for i in first}
        warp = _warpers(params)
        # A stop string of n characters spans at most n tokens (plus a partial one on each side).
        window = max((len(s) for s in params.stop), default=0) + 2

        def pick(logits: torch.Tensor) -> torch.Tensor:
            if warp is None:
                # max().indices is argmax (first maximum on ties) and 5x faster on a bf16 CPU tensor
                return logits.max(-1).indices
            probs = torch.softmax(warp(None, logits.float()), dim=-1)
            return torch.multinomial(probs, 1, generator=gen).squeeze(1)

        def settle(at: list[int], toks: list[int]) -> list[int]:
            """Append each row's new token; return the batch positions whose row is finished."""
            out = []
            for b, tok in zip(at, toks, strict=True):
                got = new[rows[b]]
                got.append(tok)
                stop = tok in eos or len(got) >= params.max_new_tokens
                if not stop and params.stop:  # stop strings may span tokens: look at the decoded tail
                    tail = self.tokenizer.decode(got[-window:], skip_special_tokens=True)
                    stop = any(s and s in tail for s in params.stop)
                if stop:
                    out.append(b)
            return out

        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            logits_to_keep=1,
        ).logits[:, -1, :]
        last_pos = pos[:, -1]
        # Finished rows wait in the batch (decoding padding) until ADMIT_SHARE of it has finished: each
        # admission is a forward pass of its own, about a decode step's cost whatever its size.
        admit_at = max(1, int(len(rows) * ADMIT_SHARE))
        dead: set[int] = set()  # batch positions whose row has finished and not been replaced

        def can_refill() -> bool:
            # The queue is longest first, so if its head fits before the newest position, all do (it
            # always does: every live row's prompt was at least as long); else the next pass takes it.
            return refill and bool(queue) and len(prompts[queue[0]]) <= mask.shape[1]

        while True:
            nxt = pick(logits)
            live = [b for b in range(len(rows)) if b not in dead]
            done = settle(live, nxt[live].tolist())
            while done:
                for b in done:
                    yield rows[b], new.pop(rows[b])
                dead.update(done)
                if not can_refill() or len(dead) < min(admit_at, len(queue), len(rows)):
                    break
                # The next prompts take the finished rows' places; a new row can finish at once.
                at = sorted(dead)[: len(queue)]
                take = [queue.popleft() for _ in at]
                first_logits = self._admit(cache, mask, last_pos, shared, at, [prompts[i] for i in take])
                for b, i in zip(at, take, strict=True):
                    rows[b], new[i] = i, []
                dead.difference_update(at)
                toks = pick(first_logits)
                nxt[at] = toks
                done = settle(at, toks.tolist())
            if dead and not can_refill():
                keep = torch.tensor([b for b in range(len(rows)) if b not in dead], device=dev)
                if len(keep) == 0:
                    return
                # Nobody left to take their places: drop finished rows, the next steps cost only what
                # the live rows need.
                cache.reorder_cache(keep)
                rows = [rows[b] for b in keep.tolist()]
                nxt, mask, last_pos = nxt[keep], mask[keep], last_pos[keep]
                dead = set()
            if refill:
                mask = _compact(cache, mask, shared, [b for b in range(len(rows)) if b not in dead])
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            last_pos = last_pos + 1
            logits = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=last_pos[:, None],
                past_key_values=cache,
            ).logits[:, -1, :]

    def _admit(
        self,
        cache: Any,
        mask: torch.Tensor,
        last_pos: torch.Tensor,
        shared: int,
        at: list[int],
        prompts: list[list[int]],
    ) -> torch.Tensor:
        """Put `prompts` into batch rows `at` of a running batch; return their next-token logits.

        They are prefilled as a small batch of their own on the shared prefix's KV, and their KV is then
        copied into the rows so that each prompt's last token sits at the batch's newest position:
        [prefix][masked gap][prompt], the layout of a left-padded row, so its next token joins the
        batch's step at once. That needs each prompt to fit before that position, which decode()'s
        longest-first order guarantees. `mask` and `last_pos` are updated in place."""
        length = mask.shape[1]  # positions filled in every row
        rest = [p[shared:] for p in prompts]
        width = max(len(p) for p in rest)
        sub = preallocated_cache(self.model.config, shared + width)
        if shared:
            for i, layer in enumerate(cache.layers):
                k, v = layer.keys[:1, :, :shared], layer.values[:1, :, :shared]  # every row's prefix
                sub.update(k.expand(len(rest), *k.shape[1:]), v.expand(len(rest), *v.shape[1:]), i)
        ids, m, pos = _left_padded(prompts, shared, self.tokenizer.pad_token_id, self.model.device)
        logits = self.model(
            input_ids=ids, attention_mask=m, position_ids=pos, past_key_values=sub, logits_to_keep=1
        ).logits[:, -1, :]
        for b, (j, p) in zip(at, enumerate(rest), strict=True):
            n = len(p)
            for big, small in zip(cache.layers, sub.layers, strict=True):
                kv = small.keys[j, :, shared + width - n :], small.values[j, :, shared + width - n :]
                big.write_row(b, length - n, *kv)
            mask[b] = 0
            mask[b, :shared] = 1
            mask[b, length - n :] = 1
            last_pos[b] = shared + n - 1
        return logits


def _left_padded(
    prompts: list[list[int]], shared: int, pad: int, dev: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and positions for the prompts' tokens after a `shared`-token prefix that
    is already in the cache: left-padded to the longest, the mask covering [prefix][padding][rest]."""
    rest = [p[shared:] for p in prompts]
    width = max(len(p) for p in rest)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rest], device=dev)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rest], device=dev)
    # Same positions as model.generate: count real tokens only, so left padding changes nothing.
    pos = shared + (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return ids, torch.cat([mask.new_ones(len(rest), shared), mask], dim=1), pos


def _compact(cache: Any, mask: torch.Tensor, shared: int, live: list[int]) -> torch.Tensor:
    """Drop the KV positions that every live row masks (between the prefix and the oldest row's prompt).

    Refilled rows start ever later, so without this the cache, and the attention over it, would grow
    by one position every step. Dropping masked positions changes no live row's attention, only the
    positions it skips (a finished row waiting for a new prompt is rewritten when it gets one); it
    runs when it frees at least COMPACT_SHARE of the cache, since each run copies it."""
    rest = mask[:, shared:]
    if not live:
        return mask
    gap = int(rest[live].argmax(-1).min())  # first unmasked position after the prefix, oldest live row
    if gap < max(8, int(mask.shape[1] * COMPACT_SHARE)):
        return mask
    for layer in cache.layers:
        layer.drop(shared, shared + gap)
    return torch.cat([mask[:, :shared], rest[:, gap:]], dim=1)


def _warpers(params: SamplingParams) -> Any:
    """transformers' own temperature / top-p warpers for sampling; None means greedy (argmax)."""
    if params.greedy:
        return None
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warp = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
    if params.top_p < 1.0:
        warp.append(TopPLogitsWarper(params.top_p))
    return warp
