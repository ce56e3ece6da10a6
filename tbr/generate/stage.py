"""`tbr generate`: one prompt to stdout, or a JSONL file of prompts to a JSONL file of answers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError
from tbr.generate import BackendConfig, SamplingParams, chat, generate_cached, make_backend
from tbr.generate.base import (
    PROMPT_FORMATS,
    Conversation,
    PromptTooLongError,
    check_conversation,
    check_length,
)
from tbr.io import ensure_dir, read_jsonl_numbered, read_jsonl_tolerant, write_jsonl_atomic

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig(BackendConfig):
    prompt: str | None = opt(None, "a single prompt; the answer is printed")
    input: str | None = opt(None, "JSONL file with a `prompt` (or `messages`) field per line")
    out: str | None = opt(None, "JSONL output for --input (appended as items finish; reruns resume)")
    format: str = opt("chat", "prompt format", choices=PROMPT_FORMATS)
    system: str | None = opt(None, "system prompt (chat format)")
    max_new_tokens: int = opt(256, "maximum new tokens per answer")
    temperature: float = opt(0.0, "0 = greedy")
    top_p: float = opt(1.0, "nucleus sampling")
    stop: list[str] = opt([], "comma-separated stop strings")
    seed: int = opt(0, "sampling seed")

    def validate(self) -> None:
        if bool(self.prompt) == bool(self.input):
            raise ConfigError("give exactly one of --prompt TEXT or --input FILE.jsonl")
        if self.input and not self.out:
            raise ConfigError("--input needs --out FILE.jsonl")
        self.sampling()  # a bad temperature or top_p fails here, before a model loads
        if self.prompt:
            check_length(self.prompt, self.max_prompt_tokens, "--prompt")
        if self.out:
            out = Path(self.out)
            if out.is_dir():
                raise ConfigError(f"--out {out} is a directory; give a .jsonl file path")
            ensure_dir(out.parent, "--out")

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=list(self.stop),
            seed=self.seed,
        )


_KNOWN = ("messages", "prompt", "system", "input", "id")


def _read_requests(
    path: Path, system: str | None, max_prompt_tokens: int
) -> tuple[list[str], list[Conversation], list[dict]]:
    """Rows → (ids, conversations, extra fields); every bad row is a DataError naming file:line."""
    ids, convs, extra = [], [], []
    seen: dict[str, int] = {}
    for lineno, row in read_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        if "messages" in row:
            conv = check_conversation(row["messages"], where)
        elif "prompt" in row:
            for key in ("prompt", "system", "input"):
                # `"prompt": null` must not become the text "None"
                bad = (
                    not isinstance(row[key], str)
                    if key == "prompt"
                    else row.get(key) is not None and not isinstance(row[key], str)
                )
                if bad:
                    raise DataError(f"{where}: `{key}` must be a string, got {json.dumps(row[key])[:40]}")
            conv = chat(row["prompt"], row.get("system", system))
            if row.get("input"):
                conv[-1]["input"] = row["input"]
        else:
            raise DataError(f"{where}: the row has neither a `prompt` nor a `messages` field")
        for m in conv:
            check_length(m["content"] + m.get("input", ""), max_prompt_tokens, where)
        rid = str(row.get("id", lineno))
        if rid in seen:
            raise DataError(f"{where}: id {rid!r} already used on line {seen[rid]}; ids must be unique")
        seen[rid] = lineno
        ids.append(rid)
        convs.append(conv)
        extra.append({k: v for k, v in row.items() if k not in _KNOWN})
    if not convs:
        raise DataError(f"{path}: no prompts found")
    return ids, convs, extra


def _drop_stale(path: Path, rows: list[dict], ids: list[str]) -> None:
    """Leave `path` holding exactly this request's answers, in input order.

    The output file is also the write-ahead cache, so an edited prompt under an old id, or a changed
    setting, leaves the earlier answer in it; a reader would see two answers for one id. Those rows
    are dropped, and the log says how many and which ids.
    """
    keep = {r["key"] for r in rows}
    old, _ = read_jsonl_tolerant(path)
    stale = [r for r in old if r.get("key") not in keep]
    if not stale and len(old) == len(rows):
        return
    if stale:
        changed = sorted({str(r.get("id")) for r in stale} & set(ids))
        log.warning(
            "%s: replaced %d earlier answer(s) whose prompt or settings changed%s",
            path,
            len(stale),
            f" (ids: {', '.join(changed[:10])}{' …' if len(changed) > 10 else ''})" if changed else "",
        )
    write_jsonl_atomic(path, rows)


def run(cfg: GenerateConfig) -> int:
    cfg.validate()
    if cfg.input:
        inp = Path(cfg.input)
        if not inp.is_file():
            raise DataError(f"input file not found: {inp}")
        ids, convs, extra = _read_requests(inp, cfg.system, cfg.max_prompt_tokens)  # before the model loads
    backend = make_backend(cfg, progress=bool(cfg.input))
    if cfg.prompt:
        try:
            print(backend.generate([chat(cfg.prompt, cfg.system)], cfg.sampling(), fmt=cfg.format)[0])
        except PromptTooLongError as e:
            raise DataError(f"--prompt: {e}") from None
        return 0
    out = Path(cfg.out)  # type: ignore[arg-type]
    rows = generate_cached(backend, convs, cfg.sampling(), path=out, fmt=cfg.format, ids=ids, extra=extra)
    _drop_stale(out, rows, ids)
    write_manifest(
        out.parent,
        "generate",
        cfg,
        models=[backend.manifest()],
        data_files=[inp],
        extra={"outputs": {out.name: len(rows)}},
    )
    log.info("wrote %d answers to %s", len(rows), out)
    return 0
