"""The Numba time loops (recurrent_numba.py) against the NumPy reference loops (recurrent.py): each kernel on
random shapes, float64 to ~1e-12 and float32 against the float64 reference within 1e-4 abs / 1e-3 rel
(STYLE.md); then whole models, numba backend vs numpy backend (logits and every gradient, full and truncated
BPTT), and a float64 gradient check of the numba backend."""
import numpy as np
import pytest

from tinyseq.errors import TinyseqError
from tinyseq.gradcheck import check_model
from tinyseq.nn import recurrent_numba as K
from tinyseq.nn import recurrent as R
from tinyseq.nn.recurrent import GATES, KINDS, Recurrent, RecurrentConfig

F64_TOL = 1e-12
F32_ABS, F32_REL = 1e-4, 1e-3


def close32(a32, ref64):
    """float32 result vs float64 reference: within F32_ABS absolute or F32_REL relative, entrywise."""
    err = np.abs(a32.astype(np.float64) - ref64)
    return bool(np.all(err <= np.maximum(F32_ABS, F32_REL * np.abs(ref64))))


def random_layer(kind, B, T, H, seed):
    rng = np.random.default_rng(seed)
    G = GATES[kind]
    return dict(xp=rng.standard_normal((B, T, G * H)), W_hh=rng.standard_normal((G * H, H)) / np.sqrt(H),
                b_hh=0.5 * rng.standard_normal(G * H), h0=0.5 * rng.standard_normal((B, H)),
                c0=0.5 * rng.standard_normal((B, H)), dh=rng.standard_normal((B, T, H)))


SHAPES = [(1, 1, 1), (3, 5, 4), (5, 7, 6), (9, 4, 16), (64, 10, 64)]   # (B, T, H): B not a multiple of 4 too


@pytest.mark.parametrize("B,T,H", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_layer_kernels_match_reference(kind, B, T, H):
    a = random_layer(kind, B, T, H, seed=B * 100 + T * 10 + H)
    ref = R.layer_forward(kind, a["xp"], a["W_hh"], a["b_hh"], a["h0"], a["c0"])
    windows = [(0, T), (T // 2, T), (0, (T + 1) // 2)] if T > 1 else [(0, T)]
    ref_back = []
    for lo, hi in windows:
        dW, db = np.zeros_like(a["W_hh"]), np.zeros_like(a["b_hh"])
        dxp = R.layer_backward(kind, dW, db, a["dh"][:, lo:hi], ref, a["W_hh"], lo, hi)
        ref_back.append((dxp, dW, db))
    for dtype in (np.float64, np.float32):
        c = {k: v.astype(dtype) for k, v in a.items()}
        st = K.layer_forward(kind, c["xp"], c["W_hh"], c["b_hh"], c["h0"], c["c0"])
        assert set(st) == set(ref)
        for name in ref:
            assert st[name].dtype == dtype, name
            if dtype == np.float64:
                np.testing.assert_allclose(st[name], ref[name], rtol=0, atol=F64_TOL, err_msg=name)
            else:
                assert close32(st[name], ref[name]), name
        # the backward reads the reference state (cast), so each kernel is checked on its own
        st_in = {k: v.astype(dtype) for k, v in ref.items()}
        for (lo, hi), (r_dxp, r_dW, r_db) in zip(windows, ref_back):
            dW = np.full(c["W_hh"].shape, 0.25, dtype)           # backward accumulates: start non-zero
            db = np.full(c["b_hh"].shape, 0.25, dtype)
            dxp = K.layer_backward(kind, dW, db, c["dh"][:, lo:hi], st_in, c["W_hh"], lo, hi)
            for name, got, want in (("dxp", dxp, r_dxp), ("dW_hh", dW - 0.25, r_dW), ("db_hh", db - 0.25, r_db)):
                assert got.dtype == dtype, name
                if dtype == np.float64:
                    np.testing.assert_allclose(got, want, rtol=0, atol=F64_TOL * max(1, np.abs(want).max()),
                                               err_msg=f"{name} window {lo}:{hi}")
                else:
                    assert close32(got, want), f"{name} window {lo}:{hi}"


def test_float32_tanh_accuracy():
    # the float32 kernels' rational tanh: within 4e-7 of float64 tanh, saturating exactly, no NaN
    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, 1e-30, -1e-30, 1e30, -1e30, np.inf, -np.inf]])
    y = x.astype(np.float32).copy()
    K._tanh_(y)
    ref = np.tanh(x.astype(np.float32).astype(np.float64))
    assert np.abs(y - ref).max() < 5e-7
    assert not np.isnan(y).any() and np.abs(y).max() <= 1.0


# ----------------------------------------------------------------------------------------------------------
# whole models: the numba backend against the numpy backend
MODEL_CASES = [(kind, layers, inp) for kind in KINDS for layers, inp in ((1, "embedding"), (2, "onehot"),
                                                                          (3, "embedding"))]


def model_pair(kind, n_layers, input, dtype, hidden=7, d_vocab=4):
    cfg = RecurrentConfig(kind=kind, d_vocab=d_vocab, hidden=hidden, n_layers=n_layers, input=input,
                          d_embed=5 if input == "embedding" else 0)
    fast, ref = Recurrent(cfg, dtype=dtype, seed=2, backend="numba"), Recurrent(cfg, dtype=np.float64, seed=2,
                                                                                 backend="numpy")
    rng = np.random.default_rng(3)
    for name in ref.params.names():      # random biases too, so no gradient is trivially zero
        ref.params[name][...] += 0.1 * rng.standard_normal(ref.params[name].shape)
    fast.params.data[...] = ref.params.data
    return fast, ref


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,n_layers,input", MODEL_CASES)
def test_model_numba_matches_numpy(kind, n_layers, input, dtype, window):
    fast, ref = model_pair(kind, n_layers, input, dtype)
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 4, size=(6, 9))
    dout = rng.standard_normal((6, 9, 4))
    results = {}
    for name, m in (("fast", fast), ("ref", ref)):
        logits, cache = m.forward(tokens)
        m.params.zero_grad()
        m.backward(dout.astype(m.params.dtype), cache, bptt_window=window)
        results[name] = logits, m.params
    (l_fast, p_fast), (l_ref, p_ref) = results["fast"], results["ref"]
    assert l_fast.dtype == dtype and p_fast.grad.dtype == dtype
    for name, got, want in [("logits", l_fast, l_ref)] + [(n, p_fast.grads[n], p_ref.grads[n])
                                                          for n in p_ref.names()]:
        if dtype == np.float64:
            np.testing.assert_allclose(got, want, rtol=0, atol=F64_TOL * max(1, np.abs(want).max()), err_msg=name)
        else:
            assert close32(got, want), name


@pytest.mark.parametrize("kind", KINDS)
def test_model_numba_x0_gradient_matches_numpy(kind):
    fast, ref = model_pair(kind, 2, "embedding", np.float64)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 4, size=(5, 6))
    x0 = rng.standard_normal((5, 6, 5))
    dout = rng.standard_normal((5, 6, 4))
    dx = []
    for m in (fast, ref):
        _, cache = m.forward(tokens, x0=x0)
        m.params.zero_grad()
        dx.append(m.backward(dout, cache))
    np.testing.assert_allclose(dx[0], dx[1], rtol=0, atol=F64_TOL)
    assert not fast.params.grads["embed.weight"].any()


@pytest.mark.parametrize("kind,n_layers,input", [(k, 2, "embedding") for k in KINDS] + [(k, 1, "onehot") for k in KINDS])
def test_gradcheck_numba_backend(kind, n_layers, input):
    cfg = RecurrentConfig(kind=kind, d_vocab=3, hidden=5, n_layers=n_layers, input=input,
                          d_embed=4 if input == "embedding" else 0)
    model = Recurrent(cfg, dtype=np.float64, seed=1, backend="numba")
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, 3, size=(3, 5))
    x0 = rng.standard_normal((3, 5, cfg.input_width))
    rows = check_model(model, tokens, x0)
    assert all(r["ok"] for r in rows), [(r["name"], r["max_rel_err"]) for r in rows if not r["ok"]]


def test_backend_attribute_and_bad_backend():
    cfg = RecurrentConfig(kind="gru", hidden=4)
    assert Recurrent(cfg).backend == "numba"
    assert Recurrent(cfg, backend="numpy").backend == "numpy"
    with pytest.raises(TinyseqError, match="unknown backend 'cuda'") as e:
        Recurrent(cfg, backend="cuda")
    assert "\n" not in str(e.value)
