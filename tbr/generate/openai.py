"""Any OpenAI-compatible endpoint (vLLM server, llama.cpp server, a hosted API).

The key is read from an environment variable whose *name* is configured, so it never appears in a
config file, a manifest or a log. Requests run in a bounded thread pool; the openai SDK does the
retries with exponential backoff; we add a preflight check so an unreachable endpoint fails in
seconds with a clear message instead of after every retry of every request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tbr.errors import ConfigError, EndpointError
from tbr.generate.base import Conversation, OnResult, SamplingParams, check_format, cut_at_stop, render_text
from tbr.io import stable_hash

log = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """`http://user:secret@host/v1` → `http://<redacted>@host/v1`: credentials never reach a log."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="<redacted>@" + parts.netloc.rsplit("@", 1)[1]))


def api_key(env: str, url: str) -> str:
    """The key from the environment variable `env`. Unset: a loopback server (llama.cpp, vLLM on
    127.0.0.1) gets the placeholder key it ignores, with a note; any other host is an error, because
    sending no key there is almost always a forgotten `export`."""
    key = os.environ.get(env)
    if key:
        return key
    host = (urlsplit(url).hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        log.info("%s is not set; sending no API key to the local server at %s", env, redact_url(url))
        return "EMPTY"
    raise ConfigError(
        f"the environment variable {env} (the API key for {redact_url(url)}) is not set; export it, "
        f"or set it to EMPTY for a server without keys"
    )


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 4,
        timeout: float = 120.0,
        max_retries: int = 3,
        preflight: bool = True,
    ):
        import openai

        url = base_url.rstrip("/")
        # What is shown, logged and written: the URL without any user:password@ inside it.
        self.base_url = redact_url(url)
        self.model_id = model
        # Endpoints serve weights we cannot hash; the URL + model name is the best identity we have.
        self.weights_hash = "endpoint:" + stable_hash({"base_url": self.base_url, "model": model})
        self.max_concurrency = max(1, max_concurrency)
        self.client = openai.OpenAI(
            base_url=url, api_key=api_key(api_key_env, url), timeout=timeout, max_retries=max_retries
        )
        if preflight:
            self.check()

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "weights": self.weights_hash}

    def plan(self, conversations: Sequence[Conversation], fmt: str) -> None:
        return None  # the server batches as it likes; nothing here can fix it

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.model_id,
            "endpoint": self.base_url,
            "weights_hash": self.weights_hash,
            "backend": self.name,
        }

    def check(self) -> None:
        """Fail fast, with the URL, when nothing answers there."""
        import openai

        try:
            self.client.with_options(max_retries=1, timeout=10).models.list()
        except openai.APIConnectionError as e:
            raise EndpointError(
                f"cannot reach the OpenAI-compatible endpoint at {self.base_url} "
                f"({type(e).__name__}: {e}). Is the server running?"
            ) from None
        except openai.AuthenticationError:
            raise EndpointError(
                f"{self.base_url} rejected the API key (check the environment variable named by api_key_env)"
            ) from None
        except openai.APIStatusError:
            pass  # some servers do not implement /models; the real requests will tell

    def _one(self, conv: Conversation, params: SamplingParams, fmt: str) -> str:
        common: dict[str, Any] = dict(
            model=self.model_id,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
        )
        if params.stop:
            common["stop"] = list(params.stop)[:4]  # the OpenAI API accepts at most 4 stop strings
        if fmt == "chat":
            resp = self.client.chat.completions.create(messages=conv, **common)
            text = resp.choices[0].message.content or ""
        else:
            resp = self.client.completions.create(prompt=render_text(conv, fmt), **common)
            text = resp.choices[0].text or ""
        return cut_at_stop(text, params.stop).strip() if params.stop else text.strip()

    def generate_results(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        fmt: str = "chat",
        on_result: OnResult | None = None,
    ) -> list[str | EndpointError]:
        """Like generate(), but a failed item comes back as an EndpointError instead of raising.

        Judges use this: a failed request must be recorded as an error, never turned into a verdict.
        """
        import openai

        check_format(fmt)
        out: list[str | EndpointError] = [EndpointError("not run")] * len(conversations)
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        try:
            futures = {pool.submit(self._one, c, params, fmt): i for i, c in enumerate(conversations)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    out[i] = fut.result()
                except openai.OpenAIError as e:
                    out[i] = EndpointError(f"{self.base_url}: {type(e).__name__}: {str(e)[:300]}")
                    continue
                if on_result:
                    on_result(i, out[i])  # type: ignore[arg-type]
        finally:
            # On Ctrl-C / SIGTERM drop the queued requests instead of waiting for all of them (a `with`
            # block would); what finished is already written through on_result.
            pool.shutdown(wait=False, cancel_futures=True)
        return out

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        fmt: str = "chat",
        on_result: OnResult | None = None,
        batches: Sequence[Sequence[int]] | None = None,  # no effect: every request stands alone
    ) -> list[str]:
        results = self.generate_results(conversations, params, fmt=fmt, on_result=on_result)
        failed = [r for r in results if isinstance(r, EndpointError)]
        if failed:
            raise EndpointError(
                f"{len(failed)}/{len(results)} requests failed after retries; first: {failed[0]}"
            )
        return results  # type: ignore[return-value]
