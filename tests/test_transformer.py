"""The NumPy transformer: every op's backward, then the whole model, against central finite differences.

Loss is always sum(out * dout) with a *random* upstream gradient dout, in float64, on tiny shapes (STYLE.md).
"""
import itertools

import numpy as np
import pytest

from tinyseq.errors import TinyseqError
from tinyseq.gradcheck import check_model, numerical_grad
from tinyseq.nn import ops
from tinyseq.nn.recurrent import Recurrent, RecurrentConfig
from tinyseq.nn.transformer import Transformer, TransformerConfig, merge_heads, paper_config, split_qkv

REL_TOL = 1e-6    # float64 central differences (STYLE.md)


def assert_grad(analytic, numeric, name=""):
    scale = max(np.abs(numeric).max(), np.abs(analytic).max(), 1e-12)
    err = np.abs(analytic - numeric).max() / scale
    assert err < REL_TOL, f"{name}: relative error {err:.2e}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------------------
# ops, one by one
def test_layernorm(rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    dout = rng.standard_normal((2, 3, 5))
    out, mean, rstd = ops.layernorm_forward(x, w, b)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dw, db = np.zeros(5), np.zeros(5)
    dx = ops.layernorm_backward(dw, db, dout, x, w, mean, rstd)
    loss = lambda: (ops.layernorm_forward(x, w, b)[0] * dout).sum()  # noqa: E731
    assert_grad(dx, numerical_grad(loss, x), "dx")
    assert_grad(dw, numerical_grad(loss, w), "dw")
    assert_grad(db, numerical_grad(loss, b), "db")


def test_fused_qkv_projection_equals_the_transformerlens_per_head_einsum(rng):
    """The model projects q, k, v of all heads with one (C, 3*NH*HS) matmul gathered from W_Q, W_K, W_V
    (NH, C, HS); the result must be TransformerLens's per-head einsum, and the gradient scatter its transpose."""
    m = Transformer(TransformerConfig(d_vocab=3, n_ctx=4, d_model=6, n_heads=2, d_head=5, n_layers=1),
                    dtype=np.float64, seed=1, backend="numpy")
    P, h = m.params, rng.standard_normal((2, 4, 6))
    W_qkv, b_qkv = m._qkv_gather(0)
    q, k, v = split_qkv(ops.linear_forward(h, W_qkv, b_qkv), 2)                     # (B, NH, T, HS) each
    for got, name in zip((q, k, v), "QKV"):
        want = np.einsum("btc,nch->bnth", h, P[f"blocks.0.attn.W_{name}"]) + P[f"blocks.0.attn.b_{name}"][None, :, None]
        np.testing.assert_allclose(got, want, atol=1e-12)
    dW_qkv = rng.standard_normal(W_qkv.shape)
    P.grad[:] = 0
    m._qkv_scatter(0, dW_qkv)
    for i, name in enumerate("QKV"):       # the scatter must put column block i back as (NH, C, HS)
        want = dW_qkv.reshape(6, 3, 2, 5)[:, i].transpose(1, 0, 2)
        np.testing.assert_array_equal(P.grads[f"blocks.0.attn.W_{name}"], want)


def test_merged_output_projection_equals_the_per_head_sum(rng):
    """z of all heads merged to (B, T, NH*HS) times W_O viewed as (NH*HS, C) is sum over heads of z_n @ W_O[n]."""
    m = Transformer(TransformerConfig(d_vocab=3, n_ctx=4, d_model=6, n_heads=2, d_head=5, n_layers=1),
                    dtype=np.float64, seed=1, backend="numpy")
    z = rng.standard_normal((2, 2, 4, 5))                                           # (B, NH, T, HS)
    want = np.einsum("bnth,nhc->btc", z, m.params["blocks.0.attn.W_O"])
    np.testing.assert_allclose(merge_heads(z) @ m._W_O(0), want, atol=1e-12)


def test_attention(rng):
    B, NH, T, HS = 2, 2, 4, 3
    q, k, v = (rng.standard_normal((B, NH, T, HS)) for _ in range(3))
    dout = rng.standard_normal((B, NH, T, HS))
    out, att = ops.attention_forward(q, k, v)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-12)
    assert np.all(att[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)   # causal
    # row-wise max subtraction: huge scores must not overflow
    out_big, _ = ops.attention_forward(q * 1e3, k * 1e3, v)
    assert np.all(np.isfinite(out_big))
    dq, dk, dv = ops.attention_backward(dout, q, k, v, att)
    loss = lambda: (ops.attention_forward(q, k, v)[0] * dout).sum()  # noqa: E731
    assert_grad(dq, numerical_grad(loss, q), "dq")
    assert_grad(dk, numerical_grad(loss, k), "dk")
    assert_grad(dv, numerical_grad(loss, v), "dv")


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_activation(rng, act):
    fwd, bwd = getattr(ops, f"{act}_forward"), getattr(ops, f"{act}_backward")
    x = rng.standard_normal((3, 7))
    x[np.abs(x) < 1e-3] = 0.5                      # keep away from relu's kink
    dout = rng.standard_normal((3, 7))
    dx = bwd(dout, x)
    assert_grad(dx, numerical_grad(lambda: (fwd(x) * dout).sum(), x), act)


def test_gelu_is_tanh_form():
    x = np.linspace(-4, 4, 17)
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(ops.gelu_forward(x), ref, atol=1e-14)


def test_encoder(rng):
    W_E, W_pos = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    tokens = np.array([[0, 2, 2], [1, 0, 2]])     # repeated tokens: their updates must add up
    dout = rng.standard_normal((2, 3, 4))
    dW_E, dW_pos = np.zeros_like(W_E), np.zeros_like(W_pos)
    ops.encoder_backward(dW_E, dW_pos, dout, tokens)
    loss = lambda: (ops.encoder_forward(W_E, W_pos, tokens) * dout).sum()  # noqa: E731
    assert_grad(dW_E, numerical_grad(loss, W_E), "dW_E")
    assert_grad(dW_pos, numerical_grad(loss, W_pos), "dW_pos")


def test_cross_entropy(rng):
    logits = rng.standard_normal((2, 3, 4)) * 3
    targets = rng.integers(0, 4, (2, 3))
    loss, probs = ops.cross_entropy_forward(logits, targets)
    dlogits = ops.cross_entropy_backward(probs, targets)
    num = numerical_grad(lambda: ops.cross_entropy_forward(logits, targets)[0], logits)
    assert_grad(dlogits, num, "dlogits")


# ----------------------------------------------------------------------------------------------------------
# the whole model
def tiny_config(**kw):
    base = dict(d_vocab=3, n_ctx=5, n_layers=2, d_model=6, n_heads=2, d_head=4, d_mlp=7)   # NH*HS = 8 != C
    base.update(kw)
    return TransformerConfig(**base)


def random_model(cfg, dtype=np.float64, seed=0):
    """Every tensor random (LayerNorm gains and biases too, so none of their gradients is trivially checked)."""
    m = Transformer(cfg, dtype=dtype, seed=seed)
    m.params.data[...] = np.random.default_rng(seed + 1).standard_normal(m.params.size) * 0.5
    return m


@pytest.mark.parametrize("norm", ["LN", None])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_model_gradcheck(rng, norm, act):
    m = random_model(tiny_config(act_fn=act, normalization_type=norm))
    tokens = rng.integers(0, 3, (2, 4))            # T = 4 < n_ctx = 5
    x0 = rng.standard_normal((2, 4, 6))
    rows = check_model(m, tokens, x0)
    assert len(rows) == len(m.params.names()) + 1
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


@pytest.mark.parametrize("norm", ["LN", None])
def test_embedding_gradients_through_model(rng, norm):
    """check_model feeds x0 directly; here the tokens go through W_E and W_pos."""
    m = random_model(tiny_config(normalization_type=norm, n_layers=1))
    tokens = np.array([[0, 2, 2, 1], [2, 2, 0, 0]])
    logits, cache = m.forward(tokens)
    dout = rng.standard_normal(logits.shape)
    m.params.zero_grad()
    m.backward(dout, cache)
    loss = lambda: float((m.forward(tokens)[0] * dout).sum())  # noqa: E731
    for name in ("embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q"):
        assert_grad(m.params.grads[name], numerical_grad(loss, m.params[name]), name)


def test_backward_accumulates(rng):
    m = random_model(tiny_config())
    tokens = rng.integers(0, 3, (2, 5))
    logits, cache = m.forward(tokens)
    dout = rng.standard_normal(logits.shape)
    m.params.zero_grad()
    m.backward(dout, cache)
    once = m.params.grad.copy()
    m.backward(dout, cache)
    np.testing.assert_allclose(m.params.grad, 2 * once, rtol=1e-12, atol=1e-15)


def test_float32_matches_float64(rng):
    cfg = tiny_config(d_model=16, d_mlp=32, act_fn="gelu")
    m64 = random_model(cfg)
    m32 = Transformer(cfg, dtype=np.float32)
    m32.params.data[...] = m64.params.data
    tokens = rng.integers(0, 3, (3, 5))
    logits32, cache32 = m32.forward(tokens)
    assert logits32.dtype == np.float32
    assert all(a.dtype == np.float32 for a in cache32.values() if isinstance(a, np.ndarray) and a.dtype.kind == "f")
    np.testing.assert_allclose(logits32, m64.logits(tokens), atol=1e-4)
    dx0 = m32.backward(np.ones_like(logits32), cache32)
    assert dx0.dtype == np.float32 and m32.params.grad.dtype == np.float32


def test_causal(rng):
    m = random_model(tiny_config())
    tokens = rng.integers(0, 3, (2, 5))
    base = m.logits(tokens)
    for t in range(5):
        changed = tokens.copy()
        changed[:, t] = (changed[:, t] + 1) % 3
        after = m.logits(changed)
        np.testing.assert_allclose(after[:, :t], base[:, :t], atol=1e-12)
        assert np.abs(after[:, t] - base[:, t]).max() > 1e-6


def test_same_seed_same_model():
    a, b = Transformer(tiny_config(), seed=3), Transformer(tiny_config(), seed=3)
    c = Transformer(tiny_config(), seed=4)
    assert np.array_equal(a.params.data, b.params.data)
    assert not np.array_equal(a.params.data, c.params.data)
    assert np.all(a.params["blocks.0.ln1.w"] == 1) and np.all(a.params["unembed.b_U"] == 0)


def test_transformerlens_names_and_shapes():
    cfg = tiny_config(n_layers=1)
    shapes = {n: v.shape for n, v in Transformer(cfg).params.values.items()}
    assert shapes == {
        "embed.W_E": (3, 6), "pos_embed.W_pos": (5, 6),
        "blocks.0.ln1.w": (6,), "blocks.0.ln1.b": (6,),
        "blocks.0.attn.W_Q": (2, 6, 4), "blocks.0.attn.W_K": (2, 6, 4), "blocks.0.attn.W_V": (2, 6, 4),
        "blocks.0.attn.W_O": (2, 4, 6),
        "blocks.0.attn.b_Q": (2, 4), "blocks.0.attn.b_K": (2, 4), "blocks.0.attn.b_V": (2, 4),
        "blocks.0.attn.b_O": (6,),
        "blocks.0.ln2.w": (6,), "blocks.0.ln2.b": (6,),
        "blocks.0.mlp.W_in": (6, 7), "blocks.0.mlp.b_in": (7,), "blocks.0.mlp.W_out": (7, 6), "blocks.0.mlp.b_out": (6,),
        "ln_final.w": (6,), "ln_final.b": (6,),
        "unembed.W_U": (6, 3), "unembed.b_U": (3,),
    }
    no_ln = Transformer(tiny_config(normalization_type=None)).params.names()
    assert not [n for n in no_ln if ".ln" in n or n.startswith("ln")]


def test_activations(rng):
    m = Transformer(tiny_config(n_layers=2))
    tokens = rng.integers(0, 3, (2, 3))
    acts = m.activations(tokens)
    assert list(acts) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
                          "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    assert all(a.shape == (2, 3, 6) for a in acts.values())
    np.testing.assert_allclose(acts["blocks.0.hook_resid_pre"],
                               m.params["embed.W_E"][tokens] + m.params["pos_embed.W_pos"][:3])
    assert "ln_final.hook_normalized" not in Transformer(tiny_config(normalization_type=None)).activations(tokens)


def test_paper_configs():
    m = paper_config("mess3")
    assert (m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp, m.n_ctx, m.d_vocab, m.act_fn) == \
        (4, 64, 1, 8, 256, 10, 3, "relu")
    r = paper_config("rrxor")
    assert (r.n_layers, r.d_model, r.n_heads, r.d_head, r.d_mlp, r.n_ctx, r.d_vocab) == (4, 128, 4, 16, 512, 10, 2)
    with pytest.raises(TinyseqError):
        paper_config("zero_one_random")


@pytest.mark.parametrize("bad", [dict(d_model=0), dict(n_heads=-1), dict(n_ctx=1), dict(d_vocab=1),
                                 dict(act_fn="swish"), dict(normalization_type="RMS"), dict(n_layers=2.5),
                                 dict(initializer_range=0.0)])
def test_validate(bad):
    with pytest.raises(TinyseqError) as e:
        Transformer(tiny_config(**bad))
    assert "\n" not in str(e.value)


def test_bad_tokens():
    m = Transformer(tiny_config())
    with pytest.raises(TinyseqError):
        m.logits(np.zeros((1, 6), int))              # longer than n_ctx
    with pytest.raises(TinyseqError):
        m.logits(np.full((1, 3), 3))                  # outside the vocabulary


@pytest.mark.parametrize("build", [lambda: Transformer(tiny_config()),
                                   lambda: Recurrent(RecurrentConfig(d_vocab=3, hidden=4, n_ctx=5))],
                         ids=["transformer", "gru"])
@pytest.mark.parametrize("tokens, says", [(np.array([0, 1, 2]), "wrap a single sequence as tokens[None]"),
                                          (np.zeros((1, 6), int), "outside 1..n_ctx=5"),
                                          (np.full((1, 3), 3), "token values must be in 0..2"),
                                          (np.zeros((1, 3)), "integer array")])
def test_every_model_checks_tokens_the_same_way(build, tokens, says):
    """One token check for all models (params.check_tokens): 1-D input is refused, not guessed to be one
    sequence; too long, out-of-vocabulary and float input are refused with the same one-line message."""
    with pytest.raises(TinyseqError) as e:
        build().logits(tokens)
    assert says in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# the KV-cache forward of the k-step rollout: the same logits as the full forward on the joined sequence
@pytest.mark.parametrize("dtype,backend,tol", [(np.float64, "numpy", 1e-12), (np.float64, "numba", 1e-12),
                                               (np.float32, "numba", 1e-4)])
def test_continuation_logits_equal_the_full_forward(dtype, backend, tol):
    m = Transformer(TransformerConfig(n_ctx=9, d_vocab=3, n_layers=2, act_fn="gelu"), dtype=dtype, backend=backend)
    m.params.data[...] += np.random.default_rng(1).standard_normal(m.params.data.shape).astype(dtype) * 0.5
    rng = np.random.default_rng(2)
    prefix = rng.integers(0, 3, (4, 5))                                              # t = 5, depth 3: 8 <= n_ctx
    levels = m.continuation_logits(prefix, 3)
    assert [z.shape for z in levels] == [(4, 3, 3), (4, 9, 3), (4, 27, 3)]
    for j, got in enumerate(levels, start=1):
        for i, c in enumerate(itertools.product(range(3), repeat=j)):                # lexicographic order
            joined = np.concatenate([prefix, np.tile(c, (len(prefix), 1))], axis=1)
            np.testing.assert_allclose(got[:, i], m.logits(joined)[:, -1], atol=tol, rtol=0)


@pytest.mark.parametrize("dtype,backend,tol,norm", [(np.float64, "numpy", 1e-12, "LN"),
                                                    (np.float64, "numba", 1e-12, "LN"),
                                                    (np.float64, "numba", 1e-10, None),
                                                    (np.float32, "numba", 1e-4, "LN")])
def test_prefix_tree_logits_equal_the_full_forward(dtype, backend, tol, norm):
    # sequences over 2 tokens share many prefixes (and some are equal): each distinct prefix is computed once
    m = Transformer(TransformerConfig(n_ctx=7, d_vocab=2, n_layers=2, n_heads=2, d_head=4, act_fn="gelu",
                                      normalization_type=norm), dtype=dtype, backend=backend)
    m.params.data[...] += np.random.default_rng(1).standard_normal(m.params.data.shape).astype(dtype) * 0.5
    tokens = np.random.default_rng(2).integers(0, 2, (300, 7))
    got = m.prefix_tree_logits(tokens)
    assert got.shape == (300, 7, 2) and got.dtype == dtype
    np.testing.assert_allclose(got, m.logits(tokens), atol=tol, rtol=tol)      # no LayerNorm: logits ~ 100
    np.testing.assert_allclose(m.prefix_tree_logits(tokens[:, :3]), m.logits(tokens[:, :3]), atol=tol, rtol=tol)


@pytest.mark.parametrize("norm,act,n_layers,backend", [("LN", "gelu", 3, "numba"), (None, "relu", 2, "numba"),
                                                       ("LN", "relu", 1, "numpy"), (None, "gelu", 3, "numpy")])
def test_prefix_tree_forward_gives_the_plain_forwards_logits_and_every_hook(norm, act, n_layers, backend):
    m = Transformer(TransformerConfig(n_ctx=6, d_vocab=3, n_layers=n_layers, n_heads=2, d_head=4, d_model=8,
                                      d_mlp=16, act_fn=act, normalization_type=norm), dtype=np.float64,
                    backend=backend)
    m.params.data[...] += np.random.default_rng(1).standard_normal(m.params.data.shape) * 0.5
    rng = np.random.default_rng(2)
    shared = np.concatenate([rng.integers(0, 3, (40, 6)), np.tile(rng.integers(0, 3, (1, 6)), (5, 1))])
    shared[:20, :3] = shared[0, :3]                                # 20 rows share 3 tokens, 5 rows are equal
    tree = np.array(list(itertools.product(range(3), repeat=5)))   # every sequence of 5 tokens: a full tree
    for tokens in (shared, tree):
        logits, cache = m.forward(tokens)
        names = m.hook_names()
        assert len(names) == 1 + 2 * n_layers + (norm == "LN")
        got_logits, got = m.prefix_tree_forward(tokens, names)
        assert list(got) == names and all(got[h].shape == tokens.shape + (8,) for h in names)
        np.testing.assert_allclose(got_logits, logits, atol=1e-10, rtol=1e-10)
        for h in names:
            np.testing.assert_allclose(got[h], cache[h], atol=1e-10, rtol=1e-10, err_msg=h)
        # mid and post differ (a block's MLP moves the stream): the hooks are not one array under two names
        assert not np.allclose(got["blocks.0.hook_resid_mid"], got["blocks.0.hook_resid_post"])
    assert m.prefix_tree_forward(tree)[1] == {}                   # no hooks asked: logits only
    with pytest.raises(TinyseqError, match="no hook 'blocks.9.hook_resid_post'"):
        m.prefix_tree_forward(tree, ["blocks.9.hook_resid_post"])


def test_distinct_prefixes_counts_every_length():
    from tinyseq.nn.transformer import distinct_prefixes, prefix_levels

    tokens = np.random.default_rng(4).integers(0, 3, (200, 6))
    expected = sum(len({tuple(row[:t]) for row in tokens}) for t in range(1, 7))     # brute force over tuples
    assert distinct_prefixes(tokens) == expected
    for t, (uniq, node) in enumerate(prefix_levels(tokens, 3)):
        # sequences share a node exactly when they share their first t + 1 tokens
        same = (tokens[:, None, :t + 1] == tokens[None, :, :t + 1]).all(axis=-1)
        assert np.array_equal(node[:, None] == node[None, :], same) and len(uniq) == node.max() + 1


def test_continuation_logits_refuse_to_exceed_the_context():
    m = Transformer(TransformerConfig(n_ctx=6, d_vocab=3))
    with pytest.raises(TinyseqError, match="longer than the context"):
        m.continuation_logits(np.zeros((2, 4), dtype=np.int64), 3)
