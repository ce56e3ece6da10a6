"""The generation Protocol every backend implements, and the prompt formats they share.

A backend takes a list of conversations (chat messages) plus sampling settings and returns texts.
How a conversation becomes model input is the *prompt format*:
  chat    the model's own chat template (system prompt optional),
  alpaca  the paper's Figure 10 template (the user message is the instruction; an optional
          "input" key on that message fills the "### Input:" slot),
  raw     the message contents concatenated, unchanged (raw completion, e.g. few-shot reflection).

What makes an answer reproducible is the backend's `identity()` (weights, dtype, …) plus its `plan()`:
batched low-precision kernels give answers that depend on which prompts share a batch, so a backend
that batches fixes its batches as a function of the *whole* request list, and the write-ahead cache
(tbr.generate.cache) reruns whole batches. A resumed run is then bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from tbr.errors import ConfigError, DataError
from tbr.prompts import alpaca_prompt

Message = dict[str, str]
Conversation = list[Message]
PROMPT_FORMATS = ("chat", "alpaca", "raw")
ROLES = ("system", "user", "assistant")
# Longest prompt a backend accepts, in tokens. One 5 MB prompt line once ran for 10 minutes to 21 GB;
# real prompts of the suites here are far below this.
DEFAULT_MAX_PROMPT_TOKENS = 4096
# A token is rarely more than a dozen characters, so a prompt longer than this many characters per
# allowed token is too long before any tokenizer sees it (checked before a model loads).
MAX_CHARS_PER_TOKEN = 32

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

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:  # `not >=` also rejects NaN
            raise ConfigError(f"temperature must be at least 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

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
        batches: Sequence[Sequence[int]] | None = None,
    ) -> list[str]:
        """Answers in order. `batches` (indices into `conversations`, from plan()) fixes which prompts
        share a batch; None lets the backend plan them itself."""
        ...

    def identity(self) -> dict[str, Any]:
        """Everything besides prompt and sampling that changes an answer (weights, dtype, batch size)."""
        ...

    def plan(self, conversations: Sequence[Conversation], fmt: str) -> list[list[int]] | None:
        """Batches as a function of the whole list, or None when an answer does not depend on its
        batch (endpoints: the server batches as it likes, which we cannot fix)."""
        ...

    def manifest(self) -> dict[str, Any]:
        """The model as the stage manifest records it (name, weights hash, backend, dtype)."""
        ...


def check_format(fmt: str) -> None:
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}")


def check_conversation(conv: Any, where: str) -> Conversation:
    """A list of {role, content} messages with known roles and string contents; DataError naming
    `where` (file:line or row id) otherwise. `input` (alpaca's second slot) is allowed on a message."""
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    for j, m in enumerate(conv):
        if not isinstance(m, dict):
            raise DataError(f"{where}: message {j} is {type(m).__name__}, not an object")
        if m.get("role") not in ROLES:
            raise DataError(f"{where}: message {j} has role {m.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            got = "missing" if "content" not in m else type(m["content"]).__name__
            raise DataError(f"{where}: message {j} needs a string `content` (got {got})")
        if "input" in m and not isinstance(m["input"], str):
            raise DataError(f"{where}: message {j} has a non-string `input`")
    return conv


class PromptTooLongError(DataError):
    """A prompt over the token limit; `index` is its position in the request list."""

    def __init__(self, index: int, n_tokens: int, limit: int):
        super().__init__(
            f"prompt has {n_tokens:,} tokens, more than --max-prompt-tokens {limit}; "
            "shorten it or raise the limit"
        )
        self.index = index


def check_length(text: str, max_tokens: int, where: str) -> None:
    """The cheap pre-model check: far more characters than max_tokens can hold."""
    if len(text) > max_tokens * MAX_CHARS_PER_TOKEN:
        raise DataError(
            f"{where}: prompt of {len(text):,} characters is longer than --max-prompt-tokens "
            f"{max_tokens} allows; shorten it or raise the limit"
        )


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
