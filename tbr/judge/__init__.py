"""Refusal judges behind one Protocol (tbr.judge.base), looked up by name.

    judge = make_judge("llm", api_base="http://127.0.0.1:8080/v1", api_model="gpt-4")
    verdicts = judge.judge(make_items(prompts, responses))

Rule judges see only the answer part of a reflected response; items keep both parts.
"""

from __future__ import annotations

from collections.abc import Sequence

from tbr.errors import ConfigError
from tbr.judge.base import LABELS, Judge, JudgeItem, Verdict
from tbr.reflection import split

# `learned` is the shipped learned judge; `learned:DIR` one written by `tbr judge train --out DIR`;
# `learned-cross` the cross-encoder design, built from $TBR_DATA_DIR on first use and cached
# (tbr.judge.train.cached_cross_judge; its weights are too large to ship).
JUDGES = ("keyword", "xstest-strmatch", "llm", "guard", "learned", "learned-cross")

__all__ = [
    "JUDGES",
    "LABELS",
    "Judge",
    "JudgeItem",
    "Verdict",
    "check_judge_names",
    "is_learned",
    "make_item",
    "make_items",
    "make_judge",
]


def is_learned(name: str) -> bool:
    return name in ("learned", "learned-cross") or name.startswith("learned:")


def check_judge_names(names: Sequence[str]) -> None:
    """ConfigError naming any judge that is neither a known name nor `learned:DIR`."""
    unknown = [n for n in names if n not in JUDGES and not is_learned(n)]
    if unknown:
        raise ConfigError(
            f"unknown judge(s) {', '.join(unknown)}; choose from: {', '.join(JUDGES)}, learned:DIR"
        )


def make_judge(
    name: str,
    *,
    api_base: str | None = None,
    api_model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 4,
    timeout: float = 60.0,
    max_tokens: int | None = None,
) -> Judge:
    """A judge by name. Endpoint judges (llm, guard) check that the endpoint answers, and raise
    EndpointError if it does not; rule judges ignore the endpoint options. `max_tokens` caps an
    endpoint judge's reply (default: XSTest's 16 for llm, 20 for guard); a chatty judge model that
    explains before naming the class needs more, or its reply is cut and counted as an error.
    `learned` loads the judge shipped in tbr/assets/judges/learned, `learned:DIR` one written by
    `tbr judge train`, `learned-cross` the cross-encoder judge (built once from $TBR_DATA_DIR's
    XSTest completions, a few CPU minutes, then cached); a directory that was changed after training, or that needs another encoder than
    the installed one, is a ModelError."""
    # Imports are local so `import tbr.judge` stays cheap for the CLI.
    if name == "keyword":
        from tbr.judge.keyword import KeywordJudge

        return KeywordJudge()
    if name == "xstest-strmatch":
        from tbr.judge.strmatch import StrmatchJudge

        return StrmatchJudge()
    if name == "learned-cross":
        from tbr.judge.learned import LearnedJudge
        from tbr.judge.train import cached_cross_judge

        return LearnedJudge.load(cached_cross_judge(), name=name)
    if is_learned(name):
        from tbr.judge.learned import DEFAULT_DIR, LearnedJudge

        return LearnedJudge.load(name.partition(":")[2] or DEFAULT_DIR, name=name)
    if name in ("llm", "guard"):
        from tbr.judge.llm import LLMJudge, endpoint

        backend = endpoint(
            name,
            api_base,
            api_model,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            timeout=timeout,
        )
        limit = {"max_tokens": max_tokens} if max_tokens else {}
        if name == "llm":
            return LLMJudge(backend, **limit)
        from tbr.judge.guard import GuardJudge

        return GuardJudge(backend, **limit)
    raise ConfigError(f"unknown judge {name!r}; choose from: {', '.join(JUDGES)}, learned:DIR")


def make_item(prompt: str, response: str, reflection_format: str = "tagged") -> JudgeItem:
    """One item to judge: the full response plus its answer part (reflection stripped)."""
    parts = split(response, reflection_format)
    return JudgeItem(prompt=prompt, response=response, answer=parts.answer, reflection=parts.reflection)


def make_items(
    prompts: Sequence[str], responses: Sequence[str], reflection_format: str = "tagged"
) -> list[JudgeItem]:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [make_item(p, r, reflection_format) for p, r in zip(prompts, responses, strict=True)]
