"""Write-ahead generation results: every finished item is appended to JSONL at once.

A rerun after a crash reads the file back and only generates what is missing. Rows are keyed by
(weights hash, prompt format, conversation, sampling settings), so a retrained model or a changed
setting never reuses a stale answer (the lm-eval `--use_cache` pitfall), and a kill loses at most
the batch in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tbr.generate.base import Backend, Conversation, SamplingParams
from tbr.io import JsonlAppender, read_jsonl_tolerant, stable_hash

log = logging.getLogger(__name__)


def item_key(weights_hash: str, fmt: str, conv: Conversation, params: SamplingParams) -> str:
    return stable_hash({"w": weights_hash, "fmt": fmt, "conv": conv, "params": params.to_dict()}, length=32)


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
    keys = [item_key(backend.weights_hash, fmt, c, params) for c in conversations]
    done: dict[str, dict[str, Any]] = {}
    rows, torn = read_jsonl_tolerant(path)
    for row in rows:
        done[row["key"]] = row
    if torn:
        log.warning(
            "%s: dropped %d torn line(s) left by an interrupted run; they will be regenerated", path, torn
        )
    todo = [i for i, k in enumerate(keys) if k not in done]
    if len(todo) < len(keys):
        log.info(
            "%s: %d/%d items already done, generating %d", path, len(keys) - len(todo), len(keys), len(todo)
        )
    if todo:
        with JsonlAppender(path) as out:

            def write(j: int, text: str) -> None:
                i = todo[j]
                row = {
                    "key": keys[i],
                    "id": ids[i],
                    "messages": conversations[i],
                    "format": fmt,
                    "response": text,
                    "backend": backend.name,
                    "model": backend.model_id,
                    "weights_hash": backend.weights_hash,
                    "params": params.to_dict(),
                    **(extra[i] if extra else {}),
                }
                out.write(row)
                done[keys[i]] = row

            backend.generate([conversations[i] for i in todo], params, fmt=fmt, on_result=write)
    return [done[k] for k in keys]
