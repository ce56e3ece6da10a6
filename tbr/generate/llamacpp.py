"""Batched generation with llama.cpp in-process (llama-cpp-python's C API), from a GGUF file.

Why it exists: on a CPU a decode step is the weight matmuls (61% of a bf16 step in transformers,
tbr.generate.hf), and llama.cpp reads q8_0 weights (a quarter of fp32's bytes) with integer dot
products. Measured on an AVX2 CPU at batch 64 it is still slower than the transformers loop (q8_0
1.15x lm-eval against tbr's 1.27x; benchmarks/README.md), so it is an option, not the default.
llama-cpp-python's server has no parallel slots, so the batching is done here: one llama_batch carries
a token for every live row, each row its own sequence with its own KV stream.

What stays the transformers backend's: the tokenizer, the chat encoding (tbr.generate.hf.encode_chat),
the batch plan, the stop strings and the detokenisation, so only the model arithmetic differs. The
GGUF is written from the checkpoint by tbr.generate.to_gguf (cached by weights hash and type); a
built-in's own GGUF is not used as is, so a base model and its fine-tune go through the same
conversion. Greedy agreement with the transformers backend is measured in benchmarks/generation.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tbr.errors import ConfigError, ModelError
from tbr.generate.base import DEFAULT_MAX_PROMPT_TOKENS, Conversation, OnResult, SamplingParams
from tbr.generate.hf import encode_prompts, plan_batches, run_plan
from tbr.generate.to_gguf import QTYPES, export_gguf
from tbr.io import cache_dir
from tbr.llama_server import disable_amx_repack
from tbr.models import BUILTINS, builtin_gguf, eos_token_ids, load, load_tokenizer, resolve

INSTALL_HINT = "pip install 'tbr[server]'"


def gguf_for(model: str, qtype: str) -> tuple[Path, Any, Any]:
    """(GGUF file, tokenizer, ModelRef) for a model name; the file is written once per weights hash
    and type, under $TBR_CACHE/gguf."""
    ref = resolve(model)
    if ref.base_name not in BUILTINS:
        raise ModelError(
            f"the llamacpp backend converts models that descend from a built-in ({', '.join(BUILTINS)}); "
            f"{model!r} does not name one as its base"
        )
    out = cache_dir() / "gguf" / f"{ref.weights_hash[:16]}-{qtype}.gguf"
    if not out.is_file():
        m, _, _ = load(ref, dtype="fp32", device="cpu", merge_adapter=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(m, builtin_gguf(ref.base_name), out, qtype)
        del m
    return out, load_tokenizer(ref), ref


def _eos_ids(ref: Any, tokenizer: Any) -> set[int]:
    """The same stop tokens the transformers backend uses: generation config's plus the tokenizer's."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(ref.path).eos_token_id
    except OSError:
        eos = None
    return set(eos_token_ids(eos, tokenizer.eos_token_id))


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(
        self,
        model: str,
        *,
        qtype: str = "q8_0",
        batch_size: int = 64,
        threads: int | None = None,
        n_batch: int = 2048,
        progress: bool = True,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    ):
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelError(f"the llamacpp backend needs the llama-cpp-python package: {INSTALL_HINT}")
        if qtype not in QTYPES:
            raise ConfigError(f"unknown GGUF weight type {qtype!r}; use one of {', '.join(QTYPES)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        import llama_cpp
        import torch

        global _QUIET
        if _QUIET is None:  # one C callback for the process; it must outlive every model
            _QUIET = llama_cpp.llama_log_callback(_quiet)

        self.ll = llama_cpp
        self.qtype, self.batch_size, self.progress = qtype, batch_size, progress
        self.max_prompt_tokens = max_prompt_tokens
        self.n_batch = n_batch  # tokens per llama_decode call; a longer prefill runs in chunks
        self.threads = threads or torch.get_num_threads()  # OMP_NUM_THREADS, as for the torch backend
        self.gguf, self.tokenizer, self.ref = gguf_for(model, qtype)
        self.model_id = self.ref.name
        self.weights_hash = self.ref.weights_hash
        self.eos_ids = _eos_ids(self.ref, self.tokenizer)
        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_QUIET, None)  # llama.cpp logs every context it makes to stderr
        # ggml's AMX weight repacking segfaults in llama_decode on quantised weights (tbr.llama_server)
        disable_amx_repack()
        params = llama_cpp.llama_model_default_params()
        self.extra_bufts = bool(params.use_extra_bufts)  # what the model is loaded with (the manifest)
        self._model = llama_cpp.llama_model_load_from_file(str(self.gguf).encode(), params)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {self.gguf.name}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))

    def __del__(self) -> None:
        free = getattr(getattr(self, "ll", None), "llama_model_free", None)
        if getattr(self, "_model", None) and callable(free):  # at interpreter exit the module may be gone
            free(self._model)
            self._model = None

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "weights": self.weights_hash,
            "gguf": self.qtype,
            "batch_size": self.batch_size,
        }

    def manifest(self) -> dict[str, Any]:
        return {
            **self.ref.manifest(),
            "backend": self.name,
            "gguf_type": self.qtype,
            "threads": self.threads,
            "extra_bufts": self.extra_bufts,
        }

    def plan(self, conversations: Sequence[Conversation], fmt: str) -> list[list[int]]:
        ids = encode_prompts(self.tokenizer, conversations, fmt, self.max_prompt_tokens)
        return plan_batches(ids, self.batch_size)

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
        ids = encode_prompts(self.tokenizer, conversations, fmt, self.max_prompt_tokens)

        def decode(prompts: list[list[int]], seed: int) -> Iterator[tuple[int, list[int]]]:
            return self.decode(prompts, params, np.random.default_rng(seed))

        return run_plan(
            ids,
            batches if batches is not None else plan_batches(ids, self.batch_size),
            params,
            decode,
            self.tokenizer,
            desc=f"generate [{self.model_id}]",
            progress=self.progress,
            on_result=on_result,
        )

    def _context(self, n_rows: int, n_cells: int) -> Any:
        ll = self.ll
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_cells
        cp.n_batch = cp.n_ubatch = min(n_cells, self.n_batch)
        cp.n_seq_max = n_rows
        # One KV stream per row: with a unified pool every query would attend over every row's cells
        # (masked), which made a batch of 64 three times slower than this.
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = self.threads
        ctx = ll.llama_init_from_model(self._model, cp)
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {n_cells} cells")
        return ctx

    def _submit(self, ctx: Any, batch: Any, tokens: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Decode (token, position, sequence, want logits) entries in chunks of the batch capacity;
        the logits of the wanted entries, in order. Each llama_decode call overwrites the logits of
        the one before, so every chunk's rows are copied out before the next chunk runs."""
        ll = self.ll
        cap = ll.llama_n_batch(ctx)
        out = []
        for s in range(0, len(tokens), cap):
            chunk = tokens[s : s + cap]
            for j, (tok, pos, seq, want) in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, 1
                batch.seq_id[j][0], batch.logits[j] = seq, want
            batch.n_tokens = len(chunk)
            rc = ll.llama_decode(ctx, batch)
            if rc != 0:
                raise ModelError(f"llama_decode failed with code {rc} (KV cache full or bad batch)")
            n_out = sum(w for *_, w in chunk)
            if n_out:
                out.append(
                    np.ctypeslib.as_array(ll.llama_get_logits(ctx), shape=(n_out, self.n_vocab)).copy()
                )
        return np.concatenate(out) if out else np.zeros((0, self.n_vocab), dtype=np.float32)

    def decode(
        self, prompts: list[list[int]], params: SamplingParams, rng: np.random.Generator
    ) -> Iterator[tuple[int, list[int]]]:
        """One batch of token-id prompts; yield (row, new token ids) as each row finishes."""
        ll = self.ll
        n = len(prompts)
        per_row = max(len(p) for p in prompts) + params.max_new_tokens
        cells = n * per_row
        ctx = self._context(n, cells)
        batch = ll.llama_batch_init(min(cells, self.n_batch), 0, 1)
        try:
            mem = ll.llama_get_memory(ctx)
            # Prefill every prompt; logits for each one's last token only.
            logits = self._submit(
                ctx,
                batch,
                [(t, i, r, i == len(p) - 1) for r, p in enumerate(prompts) for i, t in enumerate(p)],
            )
            live = list(range(n))  # rows in the order of the last submitted logits
            pos = [len(p) for p in prompts]
            new: list[list[int]] = [[] for _ in prompts]
            window = max((len(s) for s in params.stop), default=0) + 2
            for step in range(params.max_new_tokens):
                nxt = _pick(logits, params, rng)
                keep = []
                for b, r in enumerate(live):
                    tok = int(nxt[b])
                    new[r].append(tok)
                    done = tok in self.eos_ids or step == params.max_new_tokens - 1
                    if params.stop and not done:
                        tail = self.tokenizer.decode(new[r][-window:], skip_special_tokens=True)
                        done = any(s and s in tail for s in params.stop)
                    if done:
                        ll.llama_memory_seq_rm(mem, r, -1, -1)
                        yield r, new[r]
                    else:
                        keep.append(r)
                live = keep
                if not live:
                    return
                logits = self._submit(ctx, batch, [(new[r][-1], pos[r], r, True) for r in live])
                for r in live:
                    pos[r] += 1
        finally:
            ll.llama_batch_free(batch)
            ll.llama_free(ctx)


def _quiet(level: int, text: bytes, user_data: object) -> None:
    return None


_QUIET: Any = None


def _pick(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """Greedy argmax, or temperature / top-p sampling in float64."""
    if params.greedy:
        return logits.argmax(axis=1)
    z = logits.astype(np.float64) / params.temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = np.empty(len(p), dtype=np.int64)
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")
        if params.top_p < 1.0:
            cum = np.cumsum(row[order])
            order = order[: int(np.searchsorted(cum, params.top_p)) + 1]
        q = row[order] / row[order].sum()
        out[i] = order[rng.choice(len(order), p=q)]
    return out
