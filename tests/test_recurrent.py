"""Recurrent nets: each cell's backward and the whole model's BPTT against central differences (float64, random
upstream gradients), truncated BPTT against its definition, float32 vs float64, causality, names, config."""
import numpy as np
import pytest

from tinyseq.errors import TinyseqError
from tinyseq.gradcheck import check_model, numerical_grad, rel_err
from tinyseq.nn.recurrent import (GATES, INPUTS, KINDS, Recurrent, RecurrentConfig, gru_cell_backward,
                                  gru_cell_forward, is_cell_state, layer_forward, lstm_cell_backward,
                                  lstm_cell_forward, rnn_cell_backward, rnn_cell_forward)

TOL = 1e-6   # float64 central differences (STYLE.md)





def assert_close(name, ana, num):
    assert ana.shape == num.shape, name
    # as tinyseq.gradcheck: entries whose two gradients differ by < 1e-9 count as exact (tiny gradients are
    # dominated by the finite differences' rounding, ~1e-10 here)
    err = np.where(np.abs(ana - num) < 1e-9, 0.0, rel_err(ana, num)).max()
    assert err < TOL, f"{name}: max rel err {err:.2e}"
    assert np.abs(num).max() > 1e-6, f"{name}: numeric gradient is ~0, the check cannot fail"


def tiny_model(kind, n_layers=1, input="embedding", hidden=4, d_vocab=3, seed=0, dtype=np.float64):
    cfg = RecurrentConfig(kind=kind, d_vocab=d_vocab, hidden=hidden, n_layers=n_layers, input=input,
                          d_embed=5 if input == "embedding" else 0)
    return Recurrent(cfg, dtype=dtype, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# one cell, one step, whole batch
@pytest.mark.parametrize("kind", KINDS)
def test_cell_backward_matches_finite_differences(kind):
    rng = np.random.default_rng(1)
    B, H = 3, 4
    G = GATES[kind]
    xp = rng.standard_normal((B, G * H))
    h_prev = rng.standard_normal((B, H))
    c_prev = rng.standard_normal((B, H))
    W_hh = rng.standard_normal((G * H, H)) * 0.5
    b_hh = rng.standard_normal(G * H) * 0.5
    dh = rng.standard_normal((B, H))      # random upstream gradients: loss = sum(h * dh) (+ sum(c * dc))
    dc = rng.standard_normal((B, H))

    def loss():
        if kind == "rnn":
            return float((rnn_cell_forward(xp, h_prev, W_hh, b_hh) * dh).sum())
        if kind == "gru":
            return float((gru_cell_forward(xp, h_prev, W_hh, b_hh)[0] * dh).sum())
        h, c, _ = lstm_cell_forward(xp, h_prev, c_prev, W_hh, b_hh)
        return float((h * dh).sum() + (c * dc).sum())

    dW_hh, db_hh = np.zeros_like(W_hh), np.zeros_like(b_hh)
    dc_prev = None
    if kind == "rnn":
        h = rnn_cell_forward(xp, h_prev, W_hh, b_hh)
        dxp, dh_prev = rnn_cell_backward(dW_hh, db_hh, dh, h, h_prev, W_hh)
    elif kind == "gru":
        h, gates, hn = gru_cell_forward(xp, h_prev, W_hh, b_hh)
        dxp, dh_prev = gru_cell_backward(dW_hh, db_hh, dh, gates, hn, h_prev, W_hh)
    else:
        h, c, gates = lstm_cell_forward(xp, h_prev, c_prev, W_hh, b_hh)
        dxp, dh_prev, dc_prev = lstm_cell_backward(dW_hh, db_hh, dh, dc, gates, c, c_prev, h_prev, W_hh)

    assert_close("xp", dxp, numerical_grad(loss, xp))
    assert_close("h_prev", dh_prev, numerical_grad(loss, h_prev))
    assert_close("W_hh", dW_hh, numerical_grad(loss, W_hh))
    assert_close("b_hh", db_hh, numerical_grad(loss, b_hh))
    if kind == "lstm":
        assert_close("c_prev", dc_prev, numerical_grad(loss, c_prev))


@pytest.mark.parametrize("kind", KINDS)
def test_cell_backward_accumulates(kind):
    """Backward adds into dW_hh / db_hh (llm.c convention): two calls give twice the gradient."""
    rng = np.random.default_rng(2)
    B, H, G = 2, 3, GATES[kind]
    xp, h_prev, c_prev = rng.standard_normal((B, G * H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    W_hh, b_hh, dh = rng.standard_normal((G * H, H)), rng.standard_normal(G * H), rng.standard_normal((B, H))
    grads = []
    for reps in (1, 2):
        dW, db = np.zeros_like(W_hh), np.zeros_like(b_hh)
        for _ in range(reps):
            if kind == "rnn":
                rnn_cell_backward(dW, db, dh, rnn_cell_forward(xp, h_prev, W_hh, b_hh), h_prev, W_hh)
            elif kind == "gru":
                _, gates, hn = gru_cell_forward(xp, h_prev, W_hh, b_hh)
                gru_cell_backward(dW, db, dh, gates, hn, h_prev, W_hh)
            else:
                _, c, gates = lstm_cell_forward(xp, h_prev, c_prev, W_hh, b_hh)
                lstm_cell_backward(dW, db, dh, np.zeros_like(dh), gates, c, c_prev, h_prev, W_hh)
        grads.append((dW, db))
    np.testing.assert_allclose(grads[1][0], 2 * grads[0][0])
    np.testing.assert_allclose(grads[1][1], 2 * grads[0][1])


# ----------------------------------------------------------------------------------------------------------
# whole model, full BPTT
@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_check_model_every_row_ok(kind, n_layers, input):
    model = tiny_model(kind, n_layers, input)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 3, size=(2, 5))
    x0 = rng.standard_normal((2, 5, model.config.input_width))
    rows = check_model(model, tokens, x0)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
    assert [r["name"] for r in rows] == model.params.names() + ["input embedding x0"]


def model_loss(model, tokens, dout, x0=None):
    return float((model.forward(tokens, x0=x0)[0] * dout).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_path_gradient(kind):
    """Without x0 the tokens go through embed.weight: its gradient (np.add.at over repeated tokens) too."""
    model = tiny_model(kind, n_layers=2)
    rng = np.random.default_rng(4)
    tokens = np.array([[0, 1, 1, 2, 1], [2, 2, 0, 1, 1]])
    dout = rng.standard_normal((2, 5, 3))
    _, cache = model.forward(tokens)
    model.params.zero_grad()
    model.backward(dout, cache)
    for name in model.params.names():
        num = numerical_grad(lambda: model_loss(model, tokens, dout), model.params[name])
        assert_close(name, model.params.grads[name], num)


# ----------------------------------------------------------------------------------------------------------
# truncated BPTT against its definition
def windowed_loss(model, tokens, dout, M, base, x0=None):
    """sum_t sum(logits_t * dout_t), where logits_t is recomputed from steps t-M+1..t only, starting from the
    hidden (and cell) states of the *base* forward at step t-M in every layer, held fixed."""
    p, cfg = model.params, model.config
    T = tokens.shape[1]
    total = 0.0
    for t in range(T):
        lo = max(0, t - M + 1)
        if x0 is not None:
            x = x0[:, lo:t + 1]
        elif cfg.input == "embedding":
            x = p["embed.weight"][tokens[:, lo:t + 1]]
        else:
            x = np.eye(cfg.d_vocab)[tokens[:, lo:t + 1]]
        for k in range(cfg.n_layers):
            st = base[f"l{k}"]
            h0 = st["h"][:, lo - 1].copy() if lo > 0 else None
            c0 = st["c"][:, lo - 1].copy() if lo > 0 and cfg.kind == "lstm" else None
            xp = x @ p[f"weight_ih_l{k}"].T + p[f"bias_ih_l{k}"]
            x = layer_forward(cfg.kind, xp, p[f"weight_hh_l{k}"], p[f"bias_hh_l{k}"], h0, c0)["h"]
        logits_t = x[:, -1] @ p["readout.weight"].T + p["readout.bias"]
        total += float((logits_t * dout[:, t]).sum())
    return total


@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bptt_matches_definition(kind, M):
    model = tiny_model(kind, n_layers=2, hidden=3)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 3, size=(2, 5))
    dout = rng.standard_normal((2, 5, 3))
    for x0 in (None, rng.standard_normal((2, 5, model.config.input_width))):
        _, base = model.forward(tokens, x0=x0)
        model.params.zero_grad()
        dx0 = model.backward(dout, base, bptt_window=M)

        def loss():
            return windowed_loss(model, tokens, dout, M, base, x0)

        for name in model.params.names():
            if name == "embed.weight" and x0 is not None:
                assert not model.params.grads[name].any()
                continue
            assert_close(name, model.params.grads[name], numerical_grad(loss, model.params[name]))
        if x0 is not None:
            assert_close("x0", dx0, numerical_grad(loss, x0))


@pytest.mark.parametrize("kind", KINDS)
def test_window_at_least_T_is_full_bptt_and_window_changes_something(kind):
    model = tiny_model(kind, n_layers=2)
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, 3, size=(2, 6))
    dout = rng.standard_normal((2, 6, 3))
    grads = {}
    for M in (None, 6, 50, 2):
        _, cache = model.forward(tokens)
        model.params.zero_grad()
        model.backward(dout, cache, bptt_window=M)
        grads[M] = model.params.grad.copy()
    np.testing.assert_allclose(grads[6], grads[None], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[50], grads[None], rtol=1e-12, atol=1e-14)
    assert np.abs(grads[2] - grads[None]).max() > 1e-6
    with pytest.raises(TinyseqError):
        model.backward(dout, cache, bptt_window=0)


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_float64(kind, input):
    tokens = np.random.default_rng(7).integers(0, 3, size=(3, 8))
    m64 = tiny_model(kind, 2, input, hidden=8, seed=3, dtype=np.float64)
    m32 = tiny_model(kind, 2, input, hidden=8, seed=3, dtype=np.float32)
    l64, l32 = m64.logits(tokens), m32.logits(tokens)
    assert l32.dtype == np.float32 and l64.dtype == np.float64
    assert np.abs(l32 - l64).max() < 1e-4
    # backward stays in float32 as well
    _, cache = m32.forward(tokens)
    dx0 = m32.backward(np.ones_like(l32) / l32.size, cache)
    assert dx0.dtype == np.float32 and m32.params.grad.dtype == np.float32


@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    """Logits at step t depend only on tokens 0..t."""
    model = tiny_model(kind, 2)
    rng = np.random.default_rng(8)
    tokens = rng.integers(0, 3, size=(2, 7))
    base = model.logits(tokens)
    for t in range(6):
        changed = tokens.copy()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 3
        out = model.logits(changed)
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
        assert np.abs(out[:, t + 1] - base[:, t + 1]).max() > 0


# ----------------------------------------------------------------------------------------------------------
def test_parameter_names_and_shapes_are_pytorchs():
    cfg = RecurrentConfig(kind="lstm", d_vocab=3, hidden=4, n_layers=2, d_embed=5)
    model = Recurrent(cfg)
    shapes = {name: shape for name, shape in model.params.spec}
    assert shapes == {
        "embed.weight": (3, 5),
        "weight_ih_l0": (16, 5), "weight_hh_l0": (16, 4), "bias_ih_l0": (16,), "bias_hh_l0": (16,),
        "weight_ih_l1": (16, 4), "weight_hh_l1": (16, 4), "bias_ih_l1": (16,), "bias_hh_l1": (16,),
        "readout.weight": (3, 4), "readout.bias": (3,),
    }
    onehot = Recurrent(RecurrentConfig(kind="gru", d_vocab=3, hidden=4, input="onehot"))
    assert "embed.weight" not in onehot.params
    assert onehot.params["weight_ih_l0"].shape == (12, 3)
    assert Recurrent(RecurrentConfig(hidden=6)).params["embed.weight"].shape == (3, 6)   # d_embed 0 = hidden
    assert model.backend == "numba"   # the default; backend="numpy" runs the reference loops


def test_init_is_pytorchs_uniform():
    model = Recurrent(RecurrentConfig(kind="gru", hidden=16), dtype=np.float64)
    bound = 1 / np.sqrt(16)
    for name in model.params.names():
        v = model.params[name]
        if name == "embed.weight":
            continue
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.5 * bound, name


@pytest.mark.parametrize("kind", KINDS)
def test_activations_hooks(kind):
    model = tiny_model(kind, n_layers=2)
    tokens = np.random.default_rng(9).integers(0, 3, size=(2, 5))
    acts = model.activations(tokens)
    expected = ["rnn.hook_h_l0", "rnn.hook_h_l1"] + (["rnn.hook_c_l0", "rnn.hook_c_l1"] if kind == "lstm" else [])
    assert list(acts) == expected == model.hook_names
    assert [is_cell_state(n) for n in acts] == ["hook_c" in n for n in expected]
    for a in acts.values():
        assert a.shape == (2, 5, 4)
    # the readout reads the top layer's h
    p = model.params
    np.testing.assert_allclose(model.logits(tokens),
                               acts["rnn.hook_h_l1"] @ p["readout.weight"].T + p["readout.bias"], atol=1e-12)


@pytest.mark.parametrize("bad", [
    dict(kind="transformer"), dict(input="bits"), dict(hidden=0), dict(n_layers=0), dict(d_vocab=1),
    dict(n_ctx=1), dict(hidden=2.5), dict(d_embed=-1), dict(input="onehot", d_embed=8), dict(n_layers=True),
])
def test_validate_rejects_bad_config(bad):
    with pytest.raises(TinyseqError) as e:
        Recurrent(RecurrentConfig(**bad))
    assert "\n" not in str(e.value)


def test_bad_tokens():
    model = Recurrent(RecurrentConfig(d_vocab=3, hidden=4))
    with pytest.raises(TinyseqError):
        model.logits(np.array([[0, 3]]))
    with pytest.raises(TinyseqError):
        model.logits(np.array([0, 1]))
    with pytest.raises(TinyseqError):
        model.logits(np.array([[-1, 1]]))


# ----------------------------------------------------------------------------------------------------------
# the k-step rollout's continuation tree: one cell step per node from the parent's state
@pytest.mark.parametrize("kind,n_layers,input,backend", [("rnn", 1, "onehot", "numpy"),
                                                        ("gru", 2, "embedding", "numba"),
                                                        ("lstm", 2, "embedding", "numpy"),
                                                        ("lstm", 1, "onehot", "numba")])
def test_continuation_logits_equal_the_full_forward(kind, n_layers, input, backend):
    import itertools
    cfg = RecurrentConfig(kind=kind, d_vocab=3, hidden=5, n_layers=n_layers, input=input, n_ctx=8)
    m = Recurrent(cfg, dtype=np.float64, backend=backend)
    m.params.data[...] += np.random.default_rng(1).standard_normal(m.params.data.shape) * 0.5
    prefix = np.random.default_rng(2).integers(0, 3, (4, 5))
    levels = m.continuation_logits(prefix, 3)
    assert [z.shape for z in levels] == [(4, 3, 3), (4, 9, 3), (4, 27, 3)]
    for j, got in enumerate(levels, start=1):
        for i, c in enumerate(itertools.product(range(3), repeat=j)):
            joined = np.concatenate([prefix, np.tile(c, (len(prefix), 1))], axis=1)
            np.testing.assert_allclose(got[:, i], m.logits(joined)[:, -1], atol=1e-12, rtol=0)
    with pytest.raises(TinyseqError, match="longer than the context"):
        m.continuation_logits(prefix, 4)
