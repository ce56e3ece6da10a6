"""Write a transformers checkpoint as a GGUF file, for the llama.cpp backend (tbr.generate.llamacpp).

llama.cpp's own converter (convert_hf_to_gguf.py) ships in no wheel. Every model tbr trains descends
from a GGUF file (the built-ins ship as GGUF), so this converter takes the base model's GGUF as a
template: its metadata (architecture, hyper-parameters, vocabulary) is copied as is, and each of its
tensors is replaced by the checkpoint's own. transformers' GGUF->HF name map (the one it loads GGUF
files with) says which HF tensor each GGUF tensor is, and for llama the q/k rows get back the order
llama.cpp's rotary kernel expects (transformers' loader un-permutes them). The round trip is tested:
an f32 file loads back in transformers to the checkpoint's exact weights (tests/generate/test_to_gguf.py).

    export_gguf(model, template=builtin_gguf("smollm2-135m-instruct"), out=Path("m.gguf"), qtype="q8_0")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tbr.errors import ModelError

# Weight types a matrix can be written in; vectors (norms, biases) stay f32, as llama.cpp's converter does.
QTYPES = ("f32", "f16", "bf16", "q8_0")


def _types(qtype: str) -> tuple[Any, Any]:
    """(tensor type, general.file_type) for a QTYPES name."""
    import gguf

    t, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    table = {
        "f32": (t.F32, f.ALL_F32),
        "f16": (t.F16, f.MOSTLY_F16),
        "bf16": (t.BF16, f.MOSTLY_BF16),
        "q8_0": (t.Q8_0, f.MOSTLY_Q8_0),
    }
    if qtype not in table:
        raise ModelError(f"unknown GGUF weight type {qtype!r}; use one of {', '.join(QTYPES)}")
    return table[qtype]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf LlamaModel.permute: the inverse of transformers'
    # LlamaTensorProcessor._reverse_permute_weights.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_names(model: Any, arch: str) -> dict[str, str]:
    """GGUF tensor name -> HF state-dict name, as transformers maps them when it loads a GGUF."""
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        LlamaTensorProcessor,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    cls = TENSOR_PROCESSORS.get(arch, TensorProcessor)
    # Other processors rewrite values (gemma's norm offset, MoE expert stacking); their inverse is not
    # written here, and a silently wrong file is worse than none.
    if cls not in (TensorProcessor, LlamaTensorProcessor):
        raise ModelError(f"exporting a {arch!r} model to GGUF is not supported (llama and qwen2 are)")
    return get_gguf_hf_weights_map(model, cls(config=model.config.to_dict()))


def export_gguf(model: Any, template: Path, out: Path, qtype: str = "q8_0") -> Path:
    """Write `model`'s weights into a copy of the `template` GGUF at `out` (atomically)."""
    import gguf

    tensor_type, file_type = _types(qtype)
    reader = gguf.GGUFReader(template)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    names = _hf_names(model, arch)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        # The writer adds the architecture and the GGUF.* header fields itself.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(file_type)
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    used = set()
    for t in reader.tensors:
        hf = names.get(t.name)
        if hf is None or hf not in state:
            raise ModelError(f"{template.name}: tensor {t.name} has no counterpart in the checkpoint")
        used.add(hf)
        w = state[hf]
        if arch == "llama" and ".attn_q." in t.name:
            w = _permute(w, cfg.num_attention_heads)
        elif arch == "llama" and ".attn_k." in t.name:
            w = _permute(w, cfg.num_key_value_heads)
        if w.ndim <= 1 or tensor_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, np.ascontiguousarray(w, dtype=np.float32))
        else:
            writer.add_tensor(t.name, gguf.quants.quantize(w, tensor_type), raw_dtype=tensor_type)
    # A tied output layer is the embedding itself; any other weight left over would be lost.
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    left = sorted(set(state) - used - tied)
    if left:
        raise ModelError(f"{template.name} has no place for the checkpoint's {', '.join(left[:3])}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out
