"""`tbr generate`: one prompt to stdout, or a JSONL file of prompts to a JSONL file of answers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError
from tbr.generate import BackendConfig, SamplingParams, chat, generate_cached, make_backend
from tbr.generate.base import PROMPT_FORMATS, Conversation
from tbr.io import read_jsonl

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

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=list(self.stop),
            seed=self.seed,
        )


def _read_requests(path: Path, system: str | None) -> tuple[list[str], list[Conversation], list[dict]]:
    ids, convs, extra = [], [], []
    for n, row in enumerate(read_jsonl(path), 1):
        if "messages" in row:
            conv = row["messages"]
        elif "prompt" in row:
            conv = chat(str(row["prompt"]), row.get("system", system))
            if row.get("input"):
                conv[-1]["input"] = str(row["input"])
        else:
            raise DataError(f"{path}: row {n} has neither a `prompt` nor a `messages` field")
        ids.append(str(row.get("id", n)))
        convs.append(conv)
        extra.append({k: v for k, v in row.items() if k not in ("messages", "prompt", "system", "id")})
    if not convs:
        raise DataError(f"{path}: no prompts found")
    return ids, convs, extra


def run(cfg: GenerateConfig) -> int:
    if cfg.input:
        inp = Path(cfg.input)
        if not inp.exists():
            raise DataError(f"input file not found: {inp}")
        ids, convs, extra = _read_requests(inp, cfg.system)  # validate before loading a model
    backend = make_backend(cfg, progress=bool(cfg.input))
    if cfg.prompt:
        print(backend.generate([chat(cfg.prompt, cfg.system)], cfg.sampling(), fmt=cfg.format)[0])
        return 0
    out = Path(cfg.out)  # type: ignore[arg-type]
    rows = generate_cached(backend, convs, cfg.sampling(), path=out, fmt=cfg.format, ids=ids, extra=extra)
    write_manifest(
        out.parent,
        "generate",
        cfg,
        models=[_model_manifest(backend)],
        data_files=[inp],
        extra={"outputs": {str(out): len(rows)}},
    )
    log.info("wrote %d answers to %s", len(rows), out)
    return 0


def _model_manifest(backend: object) -> dict:
    ref = getattr(backend, "ref", None)
    if ref is not None:
        return ref.manifest()
    return {
        "name": getattr(backend, "model_id", "?"),
        "weights_hash": getattr(backend, "weights_hash", "?"),
        "backend": getattr(backend, "name", "?"),
    }
