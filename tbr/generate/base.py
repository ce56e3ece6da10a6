"""The generation Protocol every backend implements, and the prompt formats they share.

A backend takes a list of conversations (chat messages) plus sampling settings and returns texts.
How a conversation becomes model input is the *prompt format*:
  chat    the model's own chat template (system prompt optional),
  alpaca  the paper's Figure 10 template (the user message is the instruction; an optional
          "input" key on that message fills the "### Input:" slot),
  raw     the message contents concatenated, unchanged (raw completion, e.g. few-shot reflection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from tbr.errors import ConfigError
from tbr.prompts import alpaca_prompt

Message = dict[str, str]
Conversation = list[Message]
PROMPT_FORMATS = ("chat", "alpaca", "raw")

# Called with (index into the request list, finished text) as soon as an item is done, so callers can
# write results ahead of the batch finishing.
OnResult = Callable[[int, str], None]


@dataclass
class SamplingParams:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@runtime_checkable
class Backend(Protocol):
    """What every generation backend provides."""

    name: str  # "transformers", "openai", "vllm"
    model_id: str  # what was asked for: a built-in name, a path, or an endpoint model name
    weights_hash: str  # identifies the exact weights (for endpoints: base URL + model name)

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        fmt: str = "chat",
        on_result: OnResult | None = None,
    ) -> list[str]: ...


def check_format(fmt: str) -> None:
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}")


def user_message(conv: Conversation) -> Message:
    users = [m for m in conv if m.get("role") == "user"]
    if len(users) != 1:
        raise ConfigError(f"the alpaca format needs exactly one user message, got {len(users)}")
    return users[0]


def render_text(conv: Conversation, fmt: str) -> str:
    """Prompt text for the non-chat formats (chat needs the model's tokenizer or server)."""
    if fmt == "alpaca":
        m = user_message(conv)
        return alpaca_prompt(m["content"], m.get("input", ""))
    if fmt == "raw":
        return "".join(m["content"] for m in conv)
    raise ConfigError(f"render_text does not handle format {fmt!r}")


def chat(prompt: str, system: str | None = None) -> Conversation:
    """The common case: one user turn, with an optional system prompt."""
    conv: Conversation = [{"role": "system", "content": system}] if system else []
    conv.append({"role": "user", "content": prompt})
    return conv


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Trim at the earliest stop string (backends may overshoot by a token or two)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]
