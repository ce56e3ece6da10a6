"""Write-ahead generation results: every finished item is appended to JSONL at once.

A rerun after a crash reads the file back and only generates what is missing. Rows are keyed by
everything that changes an answer: the backend's identity (weights hash, dtype, batch size), the
prompt format, the conversation, the sampling settings and, for a backend that batches, the batch the
prompt was planned into. So a retrained model, another dtype or a changed setting never reuses a stale
answer (the lm-eval `--use_cache` pitfall).

Resumed = uninterrupted, bit for bit: in bf16 a greedy answer depends on which prompts share its batch.
The backend plans its batches from the *whole* request list (Backend.plan), a row's key names its
batch, and a batch with any answer missing is run again whole, with exactly the prompts it had. A kill
loses at most the batch in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tbr.errors import DataError
from tbr.generate.base import Backend, Conversation, PromptTooLongError, SamplingParams
from tbr.io import JsonlAppender, read_jsonl_tolerant, stable_hash

log = logging.getLogger(__name__)


def item_key(identity: dict[str, Any], fmt: str, conv: Conversation, params: SamplingParams) -> str:
    """The answer's key, before its batch is known (backends that do not batch use it as is)."""
    return stable_hash({"w": identity, "fmt": fmt, "conv": conv, "params": params.to_dict()}, length=32)


def batch_keys(keys: Sequence[str], batches: Sequence[Sequence[int]] | None) -> list[str]:
    """Each item's key extended by the keys of every item in its batch, in batch order."""
    if batches is None:
        return list(keys)
    out = list(keys)
    for batch in batches:
        members = [keys[i] for i in batch]
        for i in batch:
            out[i] = stable_hash({"item": keys[i], "batch": members}, length=32)
    return out


def generate_cached(
    backend: Backend,
    conversations: Sequence[Conversation],
    params: SamplingParams,
    *,
    path: str | Path,
    fmt: str = "chat",
    ids: Sequence[str] | None = None,
    extra: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Generate for every conversation not already in `path`; return one row per conversation, in order."""
    ids = list(ids) if ids is not None else [str(i) for i in range(len(conversations))]
    try:
        batches = backend.plan(conversations, fmt)
    except PromptTooLongError as e:
        raise DataError(f"prompt {ids[e.index]!r}: {e}") from None
    keys = batch_keys([item_key(backend.identity(), fmt, c, params) for c in conversations], batches)
    done: dict[str, dict[str, Any]] = {}
    rows, torn = read_jsonl_tolerant(path)
    for row in rows:
        done[row["key"]] = row
    if torn:
        log.warning(
            "%s: dropped %d torn line(s) left by an interrupted run; they will be regenerated", path, torn
        )
    # Whole batches: a batch with one answer missing runs again with every prompt it had.
    groups = batches if batches is not None else [[i] for i in range(len(conversations))]
    rerun = [b for b in groups if any(keys[i] not in done for i in b)]
    todo = [i for b in rerun for i in b]
    missing = sum(1 for k in keys if k not in done)
    if missing < len(keys):
        log.info("%s: %d/%d items already done, generating %d", path, len(keys) - missing, len(keys), missing)
    if todo:
        sub_batches = None
        if batches is not None:
            pos = {i: j for j, i in enumerate(todo)}
            sub_batches = [[pos[i] for i in b] for b in rerun]
        with JsonlAppender(path) as out:

            def write(j: int, text: str) -> None:
                i = todo[j]
                if keys[i] in done:
                    return  # rerun only for its batch mates; the answer on disk is the same
                row = {
                    "key": keys[i],
                    "id": ids[i],
                    "messages": conversations[i],
                    "format": fmt,
                    "response": text,
                    "backend": backend.name,
                    "model": backend.model_id,
                    "weights_hash": backend.weights_hash,
                    "identity": backend.identity(),
                    "params": params.to_dict(),
                    **(extra[i] if extra else {}),
                }
                out.write(row)
                done[keys[i]] = row

            backend.generate(
                [conversations[i] for i in todo], params, fmt=fmt, on_result=write, batches=sub_batches
            )
    return [done[k] for k in keys]
