"""vLLM offline engine: the scale-out path on GPUs. Imported lazily (`pip install tbr[vllm]`).

Reproducibility: vLLM batches dynamically, so greedy outputs can depend on batch composition
(vllm #17524). We record the vLLM version and VLLM_* environment in manifests and recommend
VLLM_BATCH_INVARIANT=1 when results must match exactly across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tbr.errors import ModelError
from tbr.generate.base import Conversation, OnResult, SamplingParams, check_format, cut_at_stop, render_text
from tbr.models import ModelRef, resolve


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: str | ModelRef,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = 4096,
        seed: int = 0,
    ):
        try:
            import vllm
        except ImportError:
            raise ModelError(
                "the vllm backend needs vLLM: pip install 'tbr[vllm]' (CUDA machines only)"
            ) from None
        self.ref = resolve(model) if isinstance(model, str) else model
        self.model_id = self.ref.name
        self.weights_hash = self.ref.weights_hash
        self._lora: Any = None
        kwargs: dict[str, Any] = dict(
            model=self.ref.path,
            dtype="bfloat16" if dtype == "auto" else dtype,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )
        if self.ref.adapter:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_lora_rank=64)
            self._lora = LoRARequest("tbr-adapter", 1, self.ref.adapter)
        self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        self.dtype = kwargs["dtype"]

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "weights": self.weights_hash, "dtype": self.dtype}

    def plan(self, conversations: Sequence[Conversation], fmt: str) -> None:
        return None  # continuous batching: vLLM decides, per step, which requests share a batch

    def manifest(self) -> dict[str, Any]:
        return {**self.ref.manifest(), "backend": self.name, "dtype": self.dtype}

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        fmt: str = "chat",
        on_result: OnResult | None = None,
        batches: Sequence[Sequence[int]] | None = None,  # no effect: vLLM schedules its own batches
    ) -> list[str]:
        check_format(fmt)
        sp = self._vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
        )
        if fmt == "chat":
            outs = self.llm.chat(list(conversations), sp, lora_request=self._lora, use_tqdm=True)
        else:
            prompts = [render_text(c, fmt) for c in conversations]
            outs = self.llm.generate(prompts, sp, lora_request=self._lora, use_tqdm=True)
        texts = []
        for i, o in enumerate(outs):
            t = cut_at_stop(o.outputs[0].text, params.stop).strip()
            texts.append(t)
            if on_result:
                on_result(i, t)
        return texts
