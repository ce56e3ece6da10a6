"""Generation backends behind one Protocol, plus the write-ahead cache they share."""

from __future__ import annotations

from dataclasses import dataclass

from tbr.config import opt
from tbr.errors import ConfigError
from tbr.generate.base import (
    DEFAULT_MAX_PROMPT_TOKENS,
    PROMPT_FORMATS,
    Backend,
    Conversation,
    SamplingParams,
    chat,
    cut_at_stop,
    render_text,
)
from tbr.generate.cache import generate_cached
from tbr.models import DEFAULT_MODEL

BACKENDS = ("transformers", "openai", "vllm", "llamacpp")

__all__ = [
    "BACKENDS",
    "PROMPT_FORMATS",
    "Backend",
    "BackendConfig",
    "Conversation",
    "SamplingParams",
    "chat",
    "cut_at_stop",
    "generate_cached",
    "make_backend",
    "render_text",
]


@dataclass
class BackendConfig:
    """Which model answers, and through what."""

    model: str = opt(DEFAULT_MODEL, "built-in name, local checkpoint/adapter dir, or Hugging Face id")
    backend: str = opt("transformers", "generation backend", choices=BACKENDS)
    dtype: str = opt("auto", "auto (bf16 on CUDA or CPUs with native bf16, else fp32), fp32, bf16, fp16")
    device: str | None = opt(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    batch_size: int = opt(
        64, "prompts per batch (transformers backend; bigger is faster on CPU, see benchmarks)"
    )
    refill: int = opt(
        4,
        "transformers backend: batches' worth of prompts per decode group; finished rows are "
        "replaced by the group's next prompts (continuous batching). 1 = off",
    )
    api_base: str | None = opt(None, "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_model: str | None = opt(None, "model name at the endpoint (default: --model)")
    api_key_env: str = opt("OPENAI_API_KEY", "name of the environment variable holding the API key")
    max_concurrency: int = opt(4, "parallel requests to the endpoint")
    timeout: float = opt(120.0, "seconds per request")
    max_retries: int = opt(3, "retries with exponential backoff per request")
    tensor_parallel_size: int = opt(1, "GPUs per vLLM engine")
    gguf_type: str = opt(
        "q8_0", "llamacpp backend: weight type of the GGUF written from the checkpoint (q8_0, f16, bf16, f32)"
    )
    max_prompt_tokens: int = opt(
        DEFAULT_MAX_PROMPT_TOKENS, "longest prompt accepted, in tokens; a longer one is an error naming it"
    )


def make_backend(cfg: BackendConfig, *, progress: bool = True) -> Backend:
    """Construct the configured backend (heavy imports happen here, not at module import)."""
    for key in ("batch_size", "refill", "max_prompt_tokens", "max_concurrency"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.backend == "transformers":
        from tbr.generate.hf import TransformersBackend

        return TransformersBackend(
            cfg.model,
            dtype=cfg.dtype,
            device=cfg.device,
            batch_size=cfg.batch_size,
            progress=progress,
            max_prompt_tokens=cfg.max_prompt_tokens,
            refill=cfg.refill,
        )
    if cfg.backend == "openai":
        if not cfg.api_base:
            raise ConfigError("the openai backend needs --api-base (an OpenAI-compatible /v1 URL)")
        from tbr.generate.openai import OpenAIBackend

        return OpenAIBackend(
            cfg.api_base,
            cfg.api_model or cfg.model,
            api_key_env=cfg.api_key_env,
            max_concurrency=cfg.max_concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
        )
    if cfg.backend == "vllm":
        from tbr.generate.vllm import VLLMBackend

        return VLLMBackend(cfg.model, dtype=cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size)
    if cfg.backend == "llamacpp":
        from tbr.generate.llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            cfg.model,
            qtype=cfg.gguf_type,
            batch_size=cfg.batch_size,
            progress=progress,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )
    raise ConfigError(f"unknown backend {cfg.backend!r}; use one of {', '.join(BACKENDS)}")
