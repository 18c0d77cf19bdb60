"""`tinyseq gradcheck` runs exactly these cases: every tensor of every model kind within 1e-6 of central
differences (float64, random upstream gradient)."""
import numpy as np
import pytest

from tinyseq import gradcheck


@pytest.mark.parametrize("kind", gradcheck.MODEL_KINDS)
def test_every_tensor_passes(kind):
    results = gradcheck.run(kind)
    assert results
    for _, label, rows in results:
        names = [r["name"] for r in rows]
        assert "input embedding x0" in names
        bad = [r for r in rows if not r["ok"]]
        assert not bad, (label, bad)


def test_checker_catches_a_wrong_gradient():
    """A backward that is off by 1e-4 must FAIL: the check can fail."""
    label, model, tokens, x0 = gradcheck.tiny_models("transformer")[0]
    original = model.backward

    def broken_backward(dlogits, cache):
        dx0 = original(dlogits, cache)
        model.params.grads["blocks.0.mlp.W_in"][...] *= 1 + 1e-4
        return dx0

    model.backward = broken_backward
    rows = gradcheck.check_model(model, tokens, x0)
    by = {r["name"]: r for r in rows}
    assert not by["blocks.0.mlp.W_in"]["ok"]
    assert by["blocks.0.mlp.W_out"]["ok"]
