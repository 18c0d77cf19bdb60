"""Plain NumPy forward/backward pairs: the reference a learner reads first.

Shape letters: B batch, T time, C d_model (or any feature width), V vocab, NH heads, HS head size,
F d_mlp, N = B*T rows.

Conventions (from llm.c): forward functions return their output (and whatever backward needs);
backward functions *accumulate* (`+=`) into gradient buffers that the caller zeroed once per step, and
return the gradient of the input. Each backward quotes the forward line it inverts.
The Numba twins in `ops_numba.py` have the same signatures and are tested against these.
"""
from __future__ import annotations

import math

import numpy as np

from tinyseq.errors import TinyseqError


# ----------------------------------------------------------------------------------------------------------
# token embedding: a row lookup
def embedding_forward(W, tokens):  # (V, C), (B, T) int -> (B, T, C)
    return W[tokens]


def embedding_backward(dW, dout, tokens):  # (V, C) +=, (B, T, C), (B, T)
    # forward was: out[b, t] = W[tokens[b, t]]  ->  dW[tokens[b, t]] += dout[b, t]
    # np.add.at, not dW[tokens] += ...: fancy-index += would drop repeated tokens' updates.
    np.add.at(dW, tokens.reshape(-1), dout.reshape(-1, dout.shape[-1]))


# ----------------------------------------------------------------------------------------------------------
# affine map on the last axis: out = x @ W + b
def linear_forward(x, W, b):  # (..., C), (C, D), (D,) or None -> (..., D)
    out = x @ W
    if b is not None:
        out += b
    return out


def linear_backward(dW, db, dout, x, W):  # (C, D) +=, (D,) += or None, (..., D), (..., C), (C, D) -> (..., C)
    # forward was: out = x @ W + b  ->  dx = dout @ W.T ; dW += x.T @ dout ; db += sum(dout)
    C, D = W.shape
    x2 = x.reshape(-1, C)
    d2 = dout.reshape(-1, D)
    dW += x2.T @ d2
    if db is not None:
        db += d2.sum(axis=0)
    return dout @ W.T


# ----------------------------------------------------------------------------------------------------------
# softmax: the one copy tinyseq uses (attention, cross-entropy, evaluation, probes). dtype=np.float64 computes
# in float64 whatever the input's dtype (evaluation and probes); None keeps the input's dtype (training).
def softmax(z, dtype=None):  # (..., V) -> (..., V), each row sums to 1
    z = np.asarray(z, dtype=dtype)
    z = z - z.max(axis=-1, keepdims=True)      # each row's own max (not a global one): exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z, dtype=None):  # (..., V) -> (..., V) log-probabilities, exact where softmax would underflow
    z = np.asarray(z, dtype=dtype)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------------------------
# softmax cross-entropy, mean over all B*T tokens, in nats; backward fused with the softmax.
# weights (B, T), optional: a weighted mean sum_n w_n CE_n / sum_n w_n instead (a loss mask: w = 1 on the
# tokens that count, 0 elsewhere, e.g. the path tokens of tinyseq/pathstar.py). None is the plain mean.
def cross_entropy_forward(logits, targets, weights=None):  # (B, T, V), (B, T) int, (B, T) -> loss, probs (B, T, V)
    logp = log_softmax(logits)                                            # (B, T, V)
    logp_target = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]   # (B, T)
    if weights is None:
        loss = -logp_target.mean()
    else:
        loss = -(weights * logp_target).sum() / check_loss_weights(weights, targets)
    return loss, np.exp(logp)


def cross_entropy_backward(probs, targets, scale=None, weights=None):  # (B, T, V), (B, T), _, (B, T) -> dlogits
    # forward was: loss = mean_n -log softmax(logits_n)[target_n]
    #   ->  dlogits_n = (softmax(logits_n) - onehot(target_n)) / N   (softmax and log fused: no Jacobian)
    # weighted: loss = sum_n w_n CE_n / sum_n w_n  ->  dlogits_n = w_n (softmax_n - onehot_n) / sum_n w_n
    # (`scale` replaces the 1/N or 1/sum w factor when given)
    N = targets.size if weights is None else check_loss_weights(weights, targets)
    dlogits = probs.copy()
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(probs, targets[..., None], -1) - 1, -1)
    if weights is not None:
        dlogits *= weights[..., None]
    dlogits *= (1.0 / N) if scale is None else scale
    return dlogits.astype(probs.dtype, copy=False)


def check_loss_weights(weights, targets) -> float:  # (B, T), (B, T) -> sum of the weights (float)
    """Loss weights must match the targets' shape, be >= 0 and not all 0; returns their sum."""
    if weights.shape != targets.shape:
        raise TinyseqError(f"loss weights have shape {weights.shape} but the targets {targets.shape}: "
                           f"give one weight per target token")
    total = float(weights.sum())
    if not total > 0 or weights.min() < 0:
        raise TinyseqError("loss weights must be >= 0 and not all 0 (all 0: nothing would be learned)")
    return total


# ----------------------------------------------------------------------------------------------------------
# token + learned positional embedding (the "encoder" of llm.c): x0 = W_E[tokens] + W_pos[:T]
def encoder_forward(W_E, W_pos, tokens):  # (V, C), (n_ctx, C), (B, T) int -> (B, T, C)
    T = tokens.shape[1]
    return embedding_forward(W_E, tokens) + W_pos[:T]


def encoder_backward(dW_E, dW_pos, dout, tokens):  # (V, C) +=, (n_ctx, C) +=, (B, T, C), (B, T)
    # forward was: out = W_E[tokens] + W_pos[:T]  ->  dW_E[tokens] += dout ; dW_pos[:T] += sum_b dout
    T = tokens.shape[1]
    embedding_backward(dW_E, dout, tokens)
    dW_pos[:T] += dout.sum(axis=0)


# ----------------------------------------------------------------------------------------------------------
# layer normalisation over the last axis (biased variance, eps inside the sqrt, as PyTorch/TransformerLens)
LN_EPS = 1e-5


def layernorm_forward(x, w, b):  # (..., C), (C,), (C,) -> out (..., C), mean (...), rstd (...)
    mean = x.mean(axis=-1)
    xc = x - mean[..., None]
    var = (xc * xc).mean(axis=-1)                  # biased: divide by C, not C-1
    rstd = 1.0 / np.sqrt(var + LN_EPS)              # reciprocal standard deviation, kept for backward
    norm = xc * rstd[..., None]
    out = norm * w + b
    return out, mean, rstd


def layernorm_backward(dw, db, dout, x, w, mean, rstd):  # (C,) +=, (C,) +=, (..., C), (..., C), (C,), (...), (...) -> dx (..., C)
    # forward was: norm = (x - mean) * rstd ; out = norm * w + b
    #   ->  dw += sum(dout * norm) ; db += sum(dout) ; dnorm = dout * w
    C = x.shape[-1]
    norm = (x - mean[..., None]) * rstd[..., None]
    dw += (dout * norm).reshape(-1, C).sum(axis=0)
    db += dout.reshape(-1, C).sum(axis=0)
    dnorm = dout * w
    # mean and rstd both depend on x; pushing dnorm through them (no C x C Jacobian needed) gives
    #   dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    dx = dnorm - dnorm.mean(axis=-1, keepdims=True) - norm * (dnorm * norm).mean(axis=-1, keepdims=True)
    dx *= rstd[..., None]
    return dx


# ----------------------------------------------------------------------------------------------------------
# causal multi-head self-attention on already-projected heads: out = softmax(q k^T / sqrt(HS) + mask) v
def attention_forward(q, k, v):  # (B, NH, T, HS) x3 -> out (B, NH, T, HS), att (B, NH, T, T)
    T, HS = q.shape[-2:]
    scale = 1.0 / math.sqrt(HS)                       # a Python float keeps float32 float32
    scores = (q @ k.swapaxes(-1, -2)) * scale              # (B, NH, T, T): query t (row) against key s (column)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)     # s > t: a position must not see the future
    scores[..., future] = -np.inf                           # exp(-inf) = 0 exactly
    att = softmax(scores)                                   # (B, NH, T, T) rows sum to 1; the diagonal is
                                                            # never masked, so each row's max is finite
    out = att @ v
    return out, att


def attention_backward(dout, q, k, v, att, window=None):
    # (B, NH, T, HS), q, k, v, (B, NH, T, T), int or None -> dq, dk, dv (B, NH, T, HS) [, dk_far, dv_far]
    """window=None: the ordinary backward, returns dq, dk, dv.

    window=M (myopic training, Wu et al. 2024): the gradient that query t sends to the key and value of an
    earlier position s is split by distance. In-window (t - s <= M) it is returned in dk, dv as usual and
    flows on to position s's input; out-of-window (t - s > M) it is returned separately in dk_far, dv_far,
    which the caller sends to the projection weights only (k and v at s are computed from a stop-gradient
    copy of s's input, as far as query t is concerned). Returns dq, dk, dv, dk_far, dv_far; with M >= T - 1
    nothing is out of window and dk_far = dv_far = 0."""
    # forward was: out = att @ v  ->  datt = dout @ v^T ; dv = att^T @ dout
    T, HS = q.shape[-2:]
    scale = 1.0 / math.sqrt(HS)
    datt = dout @ v.swapaxes(-1, -2)
    # forward was: att = softmax(scores) per row  ->  dscores = att * (datt - sum_s(datt * att))
    # (masked entries have att = 0, so they get no gradient: the mask needs no backward of its own)
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # forward was: scores = q @ k^T * scale  ->  dq = dscores @ k * scale ; dk = dscores^T @ q * scale
    dq = (dscores @ k) * scale
    if window is None:
        dv = att.swapaxes(-1, -2) @ dout
        dk = (dscores.swapaxes(-1, -2) @ q) * scale
        return dq, dk, dv
    # split every (query t, key s) pair by distance: near[t, s] = t - s <= window (the future has att = 0)
    t_minus_s = np.arange(T)[:, None] - np.arange(T)[None, :]
    near = (t_minus_s <= window).astype(att.dtype)                  # (T, T)
    far = 1 - near
    dv = (att * near).swapaxes(-1, -2) @ dout                        # reaches position s's input
    dv_far = (att * far).swapaxes(-1, -2) @ dout                     # reaches W_V, b_V only
    dk = ((dscores * near).swapaxes(-1, -2) @ q) * scale
    dk_far = ((dscores * far).swapaxes(-1, -2) @ q) * scale
    return dq, dk, dv, dk_far, dv_far


# ----------------------------------------------------------------------------------------------------------
# MLP nonlinearities, elementwise
def relu_forward(x):  # (...) -> (...)
    return np.maximum(x, 0)


def relu_backward(dout, x):  # (...), (...) -> dx (...)
    # forward was: out = max(x, 0)  ->  dx = dout where x > 0 else 0
    return dout * (x > 0)


# GELU, tanh approximation ("gelu_new" in TransformerLens / HF GPT-2, torch gelu(approximate="tanh")):
#   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
# It differs from the exact erf GELU by < 1e-3; the tanh form is cheap and needs no erf.
GELU_SCALE = math.sqrt(2.0 / math.pi)   # Python floats: they keep a float32 array float32 (NEP 50)
GELU_CUBIC = 0.044715


def gelu_forward(x):  # (...) -> (...)
    u = GELU_SCALE * (x + GELU_CUBIC * x * x * x)    # x*x*x, not x**3 (STYLE.md)
    return 0.5 * x * (1.0 + np.tanh(u))


def gelu_backward(dout, x):  # (...), (...) -> dx (...)
    # forward was: out = 0.5 x (1 + tanh(u)), u = s (x + a x^3)
    #   ->  dx = dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) s (1 + 3 a x^2))
    u = GELU_SCALE * (x + GELU_CUBIC * x * x * x)
    th = np.tanh(u)
    du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du)


# ----------------------------------------------------------------------------------------------------------
# fused steps (called by the transformer's blocks): each is a few of the ops above; ops_numba.py has the same
# functions as one matmul plus one Numba pass over memory (tests/test_ops_numba.py checks they agree)
def linear_act_forward(x, W, b, act):  # (..., C), (C, F), (F,), "relu" | "gelu" -> pre, post (..., F)
    pre = linear_forward(x, W, b)
    post = relu_forward(pre) if act == "relu" else gelu_forward(pre)
    return pre, post


def linear_act_backward(dW, db, dpost, x, W, pre, act):
    # (C, F) +=, (F,) +=, (..., F), (..., C), (C, F), (..., F), "relu" | "gelu" -> dx (..., C)
    # (ops_numba.py overwrites dpost with dpre; here it is left alone)
    # forward was: post = act(pre) ; pre = x @ W + b
    dpre = relu_backward(dpost, pre) if act == "relu" else gelu_backward(dpost, pre)
    return linear_backward(dW, db, dpre, x, W)


def linear_residual_forward(x, W, b, resid):  # (..., C), (C, D), (D,), (..., D) -> resid + x @ W + b (..., D)
    return resid + linear_forward(x, W, b)


def mlp_forward(x, W_in, b_in, W_out, b_out, resid, act):
    # (..., C), (C, F), (F,), (F, C), (C,), (..., C), "relu" | "gelu"
    # -> pre (..., F) or None, post (..., F), out (..., C)
    """The MLP with its residual add: out = resid + act(x @ W_in + b_in) @ W_out + b_out. pre is returned for
    gelu only: relu's derivative is 1 exactly where post > 0, so a relu MLP's backward needs post alone."""
    pre, post = linear_act_forward(x, W_in, b_in, act)
    return (None if act == "relu" else pre), post, linear_residual_forward(post, W_out, b_out, resid)


def mlp_backward(dW_in, db_in, dW_out, db_out, dout, x, W_in, pre, post, W_out, act):
    # (C, F) +=, (F,) +=, (F, C) +=, (C,) +=, (..., C), (..., C), (C, F), (..., F) or None, (..., F), (F, C), act
    # -> dx (..., C)
    # forward was: out = resid + post @ W_out + b_out ; post = act(pre) ; pre = x @ W_in + b_in
    dpost = linear_backward(dW_out, db_out, dout, post, W_out)
    return linear_act_backward(dW_in, db_in, dpost, x, W_in, post if act == "relu" else pre, act)


def layernorm_backward_add(dresid, dw, db, dout, x, w, mean, rstd):
    # (..., C) +=, (C,) +=, (C,) +=, (..., C), (..., C), (C,), (...), (...)
    # forward was: resid + f(layernorm(resid))  ->  dresid += layernorm's backward of dout
    dresid += layernorm_backward(dw, db, dout, x, w, mean, rstd)
