"""Every Numba kernel against its NumPy reference in ops.py, on random shapes, then the whole model per backend.

Tolerances (STYLE.md): float64 kernel vs float64 reference ~1e-12; float32 kernel vs float64 reference
1e-4 absolute / 1e-3 relative.
"""
import numpy as np
import pytest

from tinyseq.errors import TinyseqError
from tinyseq.gradcheck import check_model
from tinyseq.nn import ops, ops_numba
from tinyseq.nn.transformer import Transformer, TransformerConfig

SHAPES = [(1, 1, 1), (2, 3, 5), (3, 10, 8), (4, 7, 33)]     # (B, T, C)
HEAD_SHAPES = [(1, 1, 1, 1), (2, 1, 5, 3), (3, 2, 10, 8), (2, 4, 7, 16)]   # (B, NH, T, HS)


def close(kernel_out, ref_out, dtype):
    if dtype == np.float64:
        np.testing.assert_allclose(kernel_out, ref_out, rtol=1e-12, atol=1e-12)
    else:
        assert np.asarray(kernel_out).dtype == np.float32
        np.testing.assert_allclose(kernel_out, ref_out, rtol=1e-3, atol=1e-4)


def run_pair(name_fwd, args64, dtype):
    """(kernel output on args cast to dtype, reference output in float64)."""
    cast = [a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args64]
    return getattr(ops_numba, name_fwd)(*cast), getattr(ops, name_fwd)(*args64)


DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm(shape, dtype):
    rng = np.random.default_rng(1)
    B, T, C = shape
    x, w, b = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(C), rng.standard_normal(C)
    dout = rng.standard_normal(shape)
    (out, mean, rstd), (ro, rm, rr) = run_pair("layernorm_forward", [x, w, b], dtype)
    close(out, ro, dtype)
    close(mean, rm, dtype)
    close(rstd, rr, dtype)
    dw, db = np.zeros(C, dtype), np.zeros(C, dtype)
    rdw, rdb = np.zeros(C), np.zeros(C)
    dx = ops_numba.layernorm_backward(dw, db, dout.astype(dtype), x.astype(dtype), w.astype(dtype), mean, rstd)
    rdx = ops.layernorm_backward(rdw, rdb, dout, x, w, rm, rr)
    close(dx, rdx, dtype)
    close(dw, rdw, dtype)
    close(db, rdb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", HEAD_SHAPES)
def test_attention(shape, dtype):
    rng = np.random.default_rng(2)
    q, k, v, dout = (rng.standard_normal(shape) for _ in range(4))
    (out, att), (ro, ratt) = run_pair("attention_forward", [q, k, v], dtype)
    close(out, ro, dtype)
    close(att, ratt, dtype)
    grads = ops_numba.attention_backward(dout.astype(dtype), q.astype(dtype), k.astype(dtype), v.astype(dtype), att)
    for g, rg in zip(grads, ops.attention_backward(dout, q, k, v, ratt)):
        close(g, rg, dtype)


def test_attention_on_strided_views():
    """The model hands the kernels q, k, v as views of one fused (B, T, 3, NH, HS) projection."""
    rng = np.random.default_rng(3)
    B, T, NH, HS = 2, 5, 3, 4
    qkv = rng.standard_normal((B, T, 3, NH, HS)).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    out, att = ops_numba.attention_forward(q, k, v)
    ro, ratt = ops.attention_forward(q.copy(), k.copy(), v.copy())
    close(out, ro, np.float64)
    dout = rng.standard_normal(out.shape)
    for g, rg in zip(ops_numba.attention_backward(dout, q, k, v, att), ops.attention_backward(dout, q, k, v, ratt)):
        close(g, rg, np.float64)


def test_attention_huge_scores_stay_finite():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 1, 6, 4)) * s for s in (1e3, 1e3, 1.0))
    for dtype in DTYPES:
        out, att = ops_numba.attention_forward(q.astype(dtype), k.astype(dtype), v.astype(dtype))
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(att))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_activation(shape, act, dtype):
    rng = np.random.default_rng(5)
    x, dout = rng.standard_normal(shape) * 2, rng.standard_normal(shape)
    out, ref = run_pair(f"{act}_forward", [x], dtype)
    close(out, ref, dtype)
    dx, rdx = run_pair(f"{act}_backward", [dout, x], dtype)
    close(dx, rdx, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 3, 3), (5, 10, 7)])   # (B, T, V)
def test_cross_entropy(shape, dtype):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal(shape) * 4
    targets = rng.integers(0, shape[-1], shape[:2])
    (loss, probs), (rloss, rprobs) = run_pair("cross_entropy_forward", [logits, targets], dtype)
    np.testing.assert_allclose(loss, rloss, **(dict(rtol=1e-12, atol=1e-12) if dtype == np.float64
                                               else dict(rtol=1e-3, atol=1e-4)))
    close(probs, rprobs, dtype)
    for scale in (None, 0.25):
        d = ops_numba.cross_entropy_backward(probs, targets, scale)
        close(d, ops.cross_entropy_backward(rprobs, targets, scale), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_linear(shape, dtype):
    rng = np.random.default_rng(7)
    B, T, C = shape
    D = C + 2
    x, W, b, dout = (rng.standard_normal(s) for s in ((B, T, C), (C, D), (D,), (B, T, D)))
    out, ref = run_pair("linear_forward", [x, W, b], dtype)
    close(out, ref, dtype)
    dW, db, rdW, rdb = np.zeros((C, D), dtype), np.zeros(D, dtype), np.zeros((C, D)), np.zeros(D)
    dx = ops_numba.linear_backward(dW, db, dout.astype(dtype), x.astype(dtype), W.astype(dtype))
    close(dx, ops.linear_backward(rdW, rdb, dout, x, W), dtype)
    close(dW, rdW, dtype)
    close(db, rdb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_and_embedding(shape, dtype):
    rng = np.random.default_rng(8)
    B, T, C = shape
    V = 3
    W_E, W_pos = rng.standard_normal((V, C)), rng.standard_normal((T + 2, C))
    tokens = rng.integers(0, V, (B, T))                       # repeated tokens: their updates must add up
    dout = rng.standard_normal(shape)
    out, ref = run_pair("encoder_forward", [W_E, W_pos, tokens], dtype)
    close(out, ref, dtype)
    dW_E, dW_pos, rdW_E, rdW_pos = np.zeros((V, C), dtype), np.zeros((T + 2, C), dtype), np.zeros((V, C)), \
        np.zeros((T + 2, C))
    ops_numba.encoder_backward(dW_E, dW_pos, dout.astype(dtype), tokens)
    ops.encoder_backward(rdW_E, rdW_pos, dout, tokens)
    close(dW_E, rdW_E, dtype)
    close(dW_pos, rdW_pos, dtype)
    dW, rdW = np.zeros((V, C), dtype), np.zeros((V, C))
    ops_numba.embedding_backward(dW, dout.astype(dtype), tokens)
    ops.embedding_backward(rdW, dout, tokens)
    close(dW, rdW, dtype)



# ----------------------------------------------------------------------------------------------------------
# the fused steps: ops_numba.py's one-pass versions against their references at the end of ops.py
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_act(shape, act, dtype):
    rng = np.random.default_rng(10)
    B, T, C = shape
    F = 2 * C + 1
    x, W, b, dpost = (rng.standard_normal(s) for s in ((B, T, C), (C, F), (F,), (B, T, F)))
    (pre, post), (rpre, rpost) = [m.linear_act_forward(*a, act) for m, a in
                                  ((ops_numba, [v.astype(dtype) for v in (x, W, b)]), (ops, [x, W, b]))]
    close(pre, rpre, dtype)
    close(post, rpost, dtype)
    dW, db = np.full((C, F), 0.5, dtype), np.full(F, 0.5, dtype)          # the backward accumulates
    rdW, rdb = np.full((C, F), 0.5), np.full(F, 0.5)
    d = dpost.astype(dtype)                                               # overwritten by the kernel
    dx = ops_numba.linear_act_backward(dW, db, d, x.astype(dtype), W.astype(dtype), pre, act)
    rdx = ops.linear_act_backward(rdW, rdb, dpost, x, W, rpre, act)
    close(dx, rdx, dtype)
    close(dW, rdW, dtype)
    close(db, rdb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_residual(shape, dtype):
    rng = np.random.default_rng(11)
    B, T, C = shape
    D = C + 3
    x, W, b, resid = (rng.standard_normal(s) for s in ((B, T, C), (C, D), (D,), (B, T, D)))
    out = ops_numba.linear_residual_forward(*(v.astype(dtype) for v in (x, W, b, resid)))
    close(out, ops.linear_residual_forward(x, W, b, resid), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_mlp(shape, act, dtype):
    rng = np.random.default_rng(13)
    B, T, C = shape
    F = 2 * C + 1
    args = [rng.standard_normal(s) for s in ((B, T, C), (C, F), (F,), (F, C), (C,), (B, T, C))]
    (pre, post, out), (rpre, rpost, rout) = [m.mlp_forward(*a, act) for m, a in
                                             ((ops_numba, [v.astype(dtype) for v in args]), (ops, args))]
    if act == "relu":
        assert pre is None and rpre is None              # relu keeps post alone
    else:
        close(pre, rpre, dtype)
    close(post, rpost, dtype)
    close(out, rout, dtype)
    # the reference backward against the plain ops it is made of (relu: the mask from pre, not post)
    dout = rng.standard_normal((B, T, C))
    x, W_in, b_in, W_out = args[:4]
    grads = [[np.full(s, 0.5) for s in ((C, F), (F,), (F, C), (C,))] for _ in range(3)]   # they accumulate
    full_pre = ops.linear_forward(x, W_in, b_in)
    dpost = ops.linear_backward(grads[2][2], grads[2][3], dout, rpost, W_out)
    rdx_plain = ops.linear_act_backward(grads[2][0], grads[2][1], dpost, x, W_in, full_pre, act)
    rdx = ops.mlp_backward(*grads[1], dout, x, W_in, rpre, rpost, W_out, act)
    g32 = [g.astype(dtype) for g in grads[0]]
    dx = ops_numba.mlp_backward(*g32, dout.astype(dtype), x.astype(dtype), W_in.astype(dtype), pre, post,
                                W_out.astype(dtype), act)
    np.testing.assert_allclose(rdx, rdx_plain, rtol=1e-12, atol=1e-12)
    close(dx, rdx, dtype)
    for g, rg, pg in zip(g32, grads[1], grads[2]):
        np.testing.assert_allclose(rg, pg, rtol=1e-12, atol=1e-12)
        close(g, rg, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_backward_add(shape, dtype):
    rng = np.random.default_rng(12)
    B, T, C = shape
    x, w, dout, dresid = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(C), \
        rng.standard_normal(shape), rng.standard_normal(shape)
    _, mean, rstd = ops.layernorm_forward(x, w, np.zeros(C))
    dw, db, rdw, rdb = np.full(C, 0.5, dtype), np.full(C, 0.5, dtype), np.full(C, 0.5), np.full(C, 0.5)
    got = dresid.astype(dtype)
    ops_numba.layernorm_backward_add(got, dw, db, dout.astype(dtype), x.astype(dtype), w.astype(dtype),
                                   mean.astype(dtype), rstd.astype(dtype))
    want = dresid.copy()
    ops.layernorm_backward_add(want, rdw, rdb, dout, x, w, mean, rstd)
    close(got, want, dtype)
    close(dw, rdw, dtype)
    close(db, rdb, dtype)

# ----------------------------------------------------------------------------------------------------------
# the whole model, per backend
def model_pair(cfg, dtype, seed=0):
    ref = Transformer(cfg, dtype=np.float64, seed=seed, backend="numpy")
    ref.params.data[...] = np.random.default_rng(seed + 1).standard_normal(ref.params.size) * 0.5
    fast = Transformer(cfg, dtype=dtype, seed=seed, backend="numba")
    fast.params.data[...] = ref.params.data
    return fast, ref


CONFIGS = [
    TransformerConfig(d_vocab=3, n_ctx=6, n_layers=2, d_model=8, n_heads=2, d_head=3, d_mlp=12, act_fn="relu"),
    TransformerConfig(d_vocab=2, n_ctx=6, n_layers=2, d_model=8, n_heads=3, d_head=4, d_mlp=10, act_fn="gelu"),
    TransformerConfig(d_vocab=3, n_ctx=6, n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=16, act_fn="gelu",
                      normalization_type=None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=["ln-relu", "ln-gelu", "noln-gelu"])
def test_model_numba_matches_numpy(cfg, dtype):
    fast, ref = model_pair(cfg, dtype)
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, cfg.d_vocab, (3, 5))
    targets = rng.integers(0, cfg.d_vocab, (3, 5))
    grads = []
    for m in (fast, ref):
        logits, cache = m.forward(tokens)
        loss, probs = m.ops.cross_entropy_forward(logits, targets)
        m.params.zero_grad()
        m.backward(m.ops.cross_entropy_backward(probs, targets), cache)
        grads.append((logits, loss))
    (lf, loss_f), (lr, loss_r) = grads
    assert lf.dtype == dtype and fast.params.grad.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_allclose(lf, lr, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fast.params.grad, ref.params.grad, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_allclose(lf, lr, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(loss_f, loss_r, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(fast.params.grad, ref.params.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["ln-relu", "ln-gelu", "noln-gelu"])
def test_model_gradcheck_per_backend(cfg, backend):
    m = Transformer(cfg, dtype=np.float64, seed=0, backend=backend)
    m.params.data[...] = np.random.default_rng(1).standard_normal(m.params.size) * 0.5
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab, (2, 4))
    x0 = rng.standard_normal((2, 4, cfg.d_model))
    bad = [r for r in check_model(m, tokens, x0) if not r["ok"]]
    assert not bad, bad


def test_backend_attribute_and_validation():
    cfg = CONFIGS[0]
    assert Transformer(cfg).backend == "numba"
    assert Transformer(cfg, backend="numpy").ops is ops
    with pytest.raises(TinyseqError) as e:
        Transformer(cfg, backend="torch")
    assert "\n" not in str(e.value)
