"""Gradient check: hand-written backward vs central finite differences, in float64.

The loss is `sum(logits * dout)` with a *random* upstream gradient `dout` (never all ones: the gradient of
`sum(softmax)` or of `sum(layernorm)` with unit gain is identically zero, so such a check cannot fail).
Every parameter tensor is checked, and so is the input embedding x0 (the residual stream / RNN input that
the tokens are looked up into).
"""
from __future__ import annotations

import numpy as np

REL_TOL = 1e-6   # float64 central differences: ~1e-7 expected (STYLE.md)
EPS = 1e-5       # finite-difference step
MAX_ENTRIES = 40  # entries probed per tensor (random subset for large tensors; all entries for small ones)


def numerical_grad(f, x, idx=None):
    """Central differences of the scalar f() with respect to entries of x (perturbed in place, then restored).

    idx: flat indices to probe (default: every entry). Returns an array shaped like x, or (len(idx),).
    """
    flat = x.reshape(-1)
    probe = np.arange(flat.size) if idx is None else idx
    num = np.empty(len(probe))
    for j, i in enumerate(probe):
        old = flat[i]
        flat[i] = old + EPS
        lp = f()
        flat[i] = old - EPS
        lm = f()
        flat[i] = old
        num[j] = (lp - lm) / (2 * EPS)
    return num.reshape(x.shape) if idx is None else num


def _loss(model, tokens, dout, x0):
    logits, _ = model.forward(tokens, x0=x0)
    return float((logits * dout).sum())


def rel_err(a, b):
    """max |a-b| / max(|a|, |b|, 1e-8) elementwise: the usual gradient-check error, safe near zero."""
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-8)


def check_model(model, tokens, x0, seed=0, max_entries=MAX_ENTRIES):
    """Compare analytic and numerical gradients of sum(logits * dout) for every tensor and for x0.

    model must be float64. Returns rows: dict(name, shape, max_abs_diff, max_rel_err, ok).
    """
    assert model.params.dtype == np.float64, "gradient checks need float64"
    rng = np.random.default_rng(seed)
    logits, cache = model.forward(tokens, x0=x0)
    dout = rng.standard_normal(logits.shape)
    # Rounding noise of a central difference: each loss evaluation carries ~machine-eps * sum|logits*dout| of
    # error, divided by 2*EPS. Below a few times that, analytic and numerical gradients "agree" (this is what
    # decides entries whose true gradient is exactly 0, such as b_K: softmax ignores a shift shared by all keys).
    noise_floor = max(1e-9, 20 * np.finfo(np.float64).eps * float(np.abs(logits * dout).sum()) / (2 * EPS))
    model.params.zero_grad()
    dx0 = model.backward(dout, cache)

    tensors = [(name, model.params[name], model.params.grads[name]) for name in model.params.names()]
    tensors.append(("input embedding x0", x0, dx0))
    rows = []
    for name, value, grad in tensors:
        flat_v = value.reshape(-1)
        flat_g = np.asarray(grad).reshape(-1)
        n = flat_v.size
        idx = np.arange(n) if n <= max_entries else rng.choice(n, size=max_entries, replace=False)
        num = numerical_grad(lambda: _loss(model, tokens, dout, x0), value, idx)
        ana = flat_g[idx]
        abs_diff = float(np.max(np.abs(ana - num))) if len(idx) else 0.0
        # relative error, but differences below the rounding noise of the finite difference count as exact
        rel = rel_err(ana, num)
        rel = np.where(np.abs(ana - num) < noise_floor, 0.0, rel)
        max_rel = float(rel.max()) if len(idx) else 0.0
        rows.append(dict(name=name, shape=tuple(value.shape), max_abs_diff=abs_diff,
                         max_rel_err=max_rel, ok=bool(max_rel < REL_TOL)))
    return rows


# ----------------------------------------------------------------------------------------------------------
# the tiny models `tinyseq gradcheck` and the test suite check (the same code, so the suite proves the command)
MODEL_KINDS = ("transformer", "rnn", "gru", "lstm")


def tiny_models(kind: str):
    """(label, float64 model, tokens, x0) cases for one model kind: tiny shapes covering every code path."""
    from tinyseq.nn.recurrent import Recurrent, RecurrentConfig
    from tinyseq.nn.transformer import Transformer, TransformerConfig

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 3, size=(2, 5))
    cases = []
    if kind == "transformer":
        configs = [("LN, relu, 2 heads of 3 (n_heads*d_head != d_model)",
                    TransformerConfig(d_vocab=3, n_ctx=6, n_layers=2, d_model=8, n_heads=2, d_head=3, d_mlp=12,
                                      act_fn="relu", initializer_range=0.5)),
                   ("no LayerNorm, gelu",
                    TransformerConfig(d_vocab=3, n_ctx=6, n_layers=1, d_model=6, n_heads=1, d_head=4, d_mlp=10,
                                      act_fn="gelu", normalization_type=None, initializer_range=0.5))]
        for label, cfg in configs:
            model = Transformer(cfg, dtype=np.float64, seed=1)
            for name in model.params.names():  # random biases and gains too, so no gradient is trivially zero
                model.params[name][...] += 0.1 * rng.standard_normal(model.params[name].shape)
            x0 = model.params["embed.W_E"][tokens] + model.params["pos_embed.W_pos"][:tokens.shape[1]]
            cases.append((label, model, tokens, x0))
    elif kind in ("rnn", "gru", "lstm"):
        for layers, inp in ((1, "embedding"), (2, "onehot")):
            cfg = RecurrentConfig(kind=kind, d_vocab=3, n_ctx=6, hidden=5, n_layers=layers, input=inp,
                                  d_embed=4 if inp == "embedding" else 0)
            model = Recurrent(cfg, dtype=np.float64, seed=1)
            _, cache = model.forward(tokens)
            x0 = rng.standard_normal((tokens.shape[0], tokens.shape[1], cfg.input_width))
            cases.append((f"{layers} layer(s), {inp} input", model, tokens, x0))
    else:
        from tinyseq.errors import TinyseqError
        raise TinyseqError(f"unknown model '{kind}'; choose one of {', '.join(MODEL_KINDS)} or all")
    return cases


def run(kind: str):
    """[(kind, case label, rows)] for one kind or 'all'."""
    kinds = MODEL_KINDS if kind == "all" else (kind,)
    out = []
    for k in kinds:
        for label, model, tokens, x0 in tiny_models(k):
            out.append((k, label, check_model(model, tokens, x0)))
    return out
