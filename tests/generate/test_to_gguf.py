"""The GGUF writer: an f32 file loads back in transformers to the checkpoint's exact weights."""

from __future__ import annotations

import pytest
import torch

from tbr.errors import ModelError
from tbr.models import BUILTINS, DEFAULT_MODEL, builtin_gguf, load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BUILTINS[DEFAULT_MODEL].installed(), reason=f"{DEFAULT_MODEL} not installed"),
]


@pytest.fixture(scope="module")
def model():
    m, _, _ = load(DEFAULT_MODEL, dtype="fp32", device="cpu")
    # A changed weight, so the test cannot pass by copying the template's tensors.
    with torch.no_grad():
        m.model.layers[3].self_attn.q_proj.weight[:8] += 0.25
    return m


def test_f32_round_trip_is_exact(model, tmp_path):
    from transformers import AutoModelForCausalLM

    from tbr.generate.to_gguf import export_gguf

    export_gguf(model, builtin_gguf(DEFAULT_MODEL), tmp_path / "m.gguf", "f32")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_q8_0_writes_quantized_matrices_and_f32_vectors(model, tmp_path):
    import gguf

    from tbr.generate.to_gguf import export_gguf

    export_gguf(model, builtin_gguf(DEFAULT_MODEL), tmp_path / "m.gguf", "q8_0")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert r.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert not (tmp_path / "m.gguf.tmp").exists()


def test_unknown_type_is_refused(model, tmp_path):
    from tbr.generate.to_gguf import export_gguf

    with pytest.raises(ModelError, match="unknown GGUF weight type"):
        export_gguf(model, builtin_gguf(DEFAULT_MODEL), tmp_path / "m.gguf", "q3_k")
