"""Numba twins of the hot ops in `ops.py`: same names, same signatures, same results (tests/test_ops_numba.py).

Shape letters as ops.py: B batch, T time, C width, V vocab, NH heads, HS head size, N = B*T rows.

Why these ops and not others: at the sizes tinyseq trains (T = 10, C = 64) the matrix products are small, and
a NumPy step spends as much time in elementwise passes and temporaries as in BLAS. Each kernel here does one
op in one pass over memory, with no temporaries. Matrix products stay in BLAS, called from Python (`@` inside
`@njit` would need SciPy), but always as one 2-D product: NumPy runs `(B, T, C) @ (C, D)` as B separate small
products, 2-3x slower than `(B*T, C) @ (C, D)` at these sizes. This module is a complete op set for
`Transformer(backend="numba")`, plus the fused steps the transformer's blocks call
(`linear_act_forward/backward`, `linear_residual_forward`, `layernorm_backward_add`): one BLAS product and then
bias, nonlinearity and residual add in one pass over its output, in place, instead of one pass (and one new
array) each. Their references are at the end of ops.py, each composed of the plain ops above it.

Every kernel comes in two layers:
  - a Python wrapper with the ops.py signature: reshapes to 2-D rows, allocates outputs, and makes the
    constants in the array's dtype (`x.dtype.type(0.5)`: a Python float inside a kernel would promote
    float32 to float64);
  - an `@njit(cache=True)` loop nest `_name(out..., in..., constants)`: outputs first, as llm.c.
The kernels are serial: the threads of this machine go to BLAS (see tinyseq/threads.py for why).
Backward kernels accumulate (`+=`) into parameter gradients, as the ops do.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from tinyseq.nn.ops import GELU_CUBIC, GELU_SCALE, LN_EPS, check_loss_weights

# The fastmath flags the reductions need to vectorise (a sum in strict order cannot use SIMD lanes):
# reassociation, fused multiply-add, and the harmless sign-of-zero / reciprocal ones. Never "nnan"/"ninf":
# a diverged model must still show NaN and inf, not whatever the compiler assumed them away into.
FAST = {"reassoc", "contract", "nsz", "arcp"}
# Kernels that divide use error_model="numpy": x / 0 gives inf or nan as in NumPy, instead of Python's
# ZeroDivisionError, whose check on every division keeps a loop from vectorising. The results are the same bits.
DIVIDES = "numpy"


def _rows(x):  # (..., C) -> (N, C) view (a copy only if x is not contiguous)
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------------------------------------
# affine map on the last axis, by BLAS on 2-D rows
def linear_forward(x, W, b):  # (..., C), (C, D), (D,) or None -> (..., D)
    out = _rows(x) @ W                      # (N, C) @ (C, D): one BLAS call
    if b is not None:
        out += b
    return out.reshape(x.shape[:-1] + (W.shape[1],))


def linear_backward(dW, db, dout, x, W):  # (C, D) +=, (D,) += or None, (..., D), (..., C), (C, D) -> (..., C)
    # forward was: out = x @ W + b  ->  dx = dout @ W.T ; dW += x.T @ dout ; db += sum(dout)
    x2, d2 = _rows(x), _rows(dout)
    dW += x2.T @ d2
    if db is not None:
        # the column sums as a BLAS matrix-vector product: 5x faster than NumPy's d2.sum(axis=0) at (2560, 64)
        db += np.ones(d2.shape[0], dtype=d2.dtype) @ d2
    return (d2 @ W.T).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------------
# token + positional embedding
@njit(cache=True)
def _encoder_forward(out, W_E, W_pos, tokens):  # (B, T, C) <-, (V, C), (n_ctx, C), (B, T)
    B, T, C = out.shape
    for b in range(B):
        for t in range(T):
            tok = tokens[b, t]
            for c in range(C):
                out[b, t, c] = W_E[tok, c] + W_pos[t, c]


@njit(cache=True)
def _encoder_backward(dW_E, dW_pos, dout, tokens):  # (V, C) +=, (n_ctx, C) +=, (B, T, C), (B, T)
    # serial on purpose: many (b, t) share a token, so a parallel loop here would race on dW_E's rows
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            tok = tokens[b, t]
            for c in range(C):
                dW_E[tok, c] += dout[b, t, c]
                dW_pos[t, c] += dout[b, t, c]


@njit(cache=True)
def _embedding_backward(dW, dout, tokens):  # (V, C) +=, (N, C), (N,)
    N, C = dout.shape
    for i in range(N):
        tok = tokens[i]
        for c in range(C):
            dW[tok, c] += dout[i, c]


def embedding_forward(W, tokens):  # (V, C), (B, T) int -> (B, T, C)
    return W[tokens]                 # one NumPy gather is already a single pass


def embedding_backward(dW, dout, tokens):  # (V, C) +=, (B, T, C), (B, T)
    # forward was: out[b, t] = W[tokens[b, t]]  ->  dW[tokens[b, t]] += dout[b, t]
    _embedding_backward(dW, _rows(dout), np.ascontiguousarray(tokens).reshape(-1))


def encoder_forward(W_E, W_pos, tokens):  # (V, C), (n_ctx, C), (B, T) int -> (B, T, C)
    B, T = tokens.shape
    out = np.empty((B, T, W_E.shape[1]), dtype=W_E.dtype)
    _encoder_forward(out, W_E, W_pos, tokens)
    return out


def encoder_backward(dW_E, dW_pos, dout, tokens):  # (V, C) +=, (n_ctx, C) +=, (B, T, C), (B, T)
    # forward was: out = W_E[tokens] + W_pos[:T]  ->  dW_E[tokens] += dout ; dW_pos[:T] += sum_b dout
    _encoder_backward(dW_E, dW_pos, np.ascontiguousarray(dout), tokens)


# ----------------------------------------------------------------------------------------------------------
# layer normalisation over the last axis
@njit(cache=True, fastmath=FAST, error_model=DIVIDES)
def _layernorm_forward(out, mean, rstd, x, w, b, inv_c, eps, one):  # (N, C) <-, (N,) <-, (N,) <-, (N, C), (C,), (C,)
    N, C = x.shape
    for i in range(N):
        m = x[i, 0] - x[i, 0]                        # a zero in x's dtype
        for c in range(C):
            m += x[i, c]
        m *= inv_c
        var = m - m
        for c in range(C):
            d = x[i, c] - m
            var += d * d
        var *= inv_c                                 # biased: divide by C
        r = one / math.sqrt(var + eps)
        mean[i] = m
        rstd[i] = r
        for c in range(C):
            out[i, c] = (x[i, c] - m) * r * w[c] + b[c]


@njit(cache=True, fastmath=FAST)
def _layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, inv_c, add):  # (N, C) <- or += (add), (C,) +=, (C,) +=, (N, C), (N, C), (C,), (N,), (N,)
    N, C = x.shape
    for i in range(N):
        m, r = mean[i], rstd[i]
        # forward was: norm = (x - mean) * rstd ; out = norm * w + b  ->  dnorm = dout * w
        sum_dnorm = m - m
        sum_dnorm_norm = m - m
        for c in range(C):
            norm = (x[i, c] - m) * r
            dnorm = dout[i, c] * w[c]
            sum_dnorm += dnorm
            sum_dnorm_norm += dnorm * norm
            dw[c] += dout[i, c] * norm
            db[c] += dout[i, c]
        mean_dnorm = sum_dnorm * inv_c
        mean_dnorm_norm = sum_dnorm_norm * inv_c
        # dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)); add: dx += that (a residual's gradient)
        for c in range(C):
            norm = (x[i, c] - m) * r
            g = r * (dout[i, c] * w[c] - mean_dnorm - norm * mean_dnorm_norm)
            dx[i, c] = dx[i, c] + g if add else g


def layernorm_forward(x, w, b):  # (..., C), (C,), (C,) -> out (..., C), mean (...), rstd (...)
    x2 = _rows(x)
    N, C = x2.shape
    ty = x.dtype.type
    out = np.empty_like(x2)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    _layernorm_forward(out, mean, rstd, x2, w, b, ty(1.0 / C), ty(LN_EPS), ty(1.0))
    return out.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layernorm_backward(dw, db, dout, x, w, mean, rstd):  # (C,) +=, (C,) +=, (..., C), (..., C), (C,), (...), (...) -> dx (..., C)
    x2 = _rows(x)
    dx = np.empty_like(x2)
    _layernorm_backward(dx, dw, db, _rows(dout), x2, w, mean.reshape(-1), rstd.reshape(-1),
                        x.dtype.type(1.0 / x2.shape[1]), False)
    return dx.reshape(x.shape)


def layernorm_backward_add(dresid, dw, db, dout, x, w, mean, rstd):
    # (..., C) +=, (C,) +=, (C,) +=, (..., C), (..., C), (C,), (...), (...)
    # forward was: resid + f(layernorm(resid))  ->  dresid += layernorm_backward(...), in the same pass
    x2 = _rows(x)
    d2 = dresid.reshape(x2.shape)
    assert np.shares_memory(d2, dresid), "dresid must be contiguous: it is updated in place"
    _layernorm_backward(d2, dw, db, _rows(dout), x2, w, mean.reshape(-1), rstd.reshape(-1),
                        x.dtype.type(1.0 / x2.shape[1]), True)


# ----------------------------------------------------------------------------------------------------------
# causal self-attention on already-projected heads. q, k, v may be strided views (e.g. slices of one fused
# (B, T, 3, NH, HS) projection): the kernel reads them in place, no copies.
@njit(cache=True, fastmath=FAST, error_model=DIVIDES)
def _attention_forward(out, att, q, k, v, scale):  # (B, NH, T, HS) <-, (B, NH, T, T) <-, (B, NH, T, HS) x3
    B, NH, T, HS = q.shape
    for b in range(B):
        for n in range(NH):
            for t in range(T):
                # scores of query t against keys s <= t; the future (s > t) stays exactly 0 after softmax
                for s in range(t + 1):
                    dot = q[b, n, t, 0] - q[b, n, t, 0]
                    for h in range(HS):
                        dot += q[b, n, t, h] * k[b, n, s, h]
                    att[b, n, t, s] = dot * scale
                mx = att[b, n, t, 0]                  # each row's own max (s = 0 is never masked)
                for s in range(1, t + 1):
                    if att[b, n, t, s] > mx:
                        mx = att[b, n, t, s]
                total = mx - mx
                for s in range(t + 1):
                    e = math.exp(att[b, n, t, s] - mx)
                    att[b, n, t, s] = e
                    total += e
                for s in range(t + 1):
                    att[b, n, t, s] /= total
                for s in range(t + 1, T):
                    att[b, n, t, s] = total - total
                # out = att @ v
                for h in range(HS):
                    acc = total - total
                    for s in range(t + 1):
                        acc += att[b, n, t, s] * v[b, n, s, h]
                    out[b, n, t, h] = acc


@njit(cache=True, fastmath=FAST)
def _attention_backward(dq, dk, dv, dk_far, dv_far, dout, q, k, v, att, scale, window):
    # (B, NH, T, HS) <- dq; +=: dk, dv (zeroed), dk_far, dv_far (zeroed, or dk, dv themselves: no cut);
    # dout, q, k, v (B, NH, T, HS), att (B, NH, T, T), window: pairs with t - s > window go to the *_far buffers
    B, NH, T, HS = q.shape
    datt = np.empty(T, dtype=att.dtype)
    for b in range(B):
        for n in range(NH):
            for t in range(T):
                near = max(0, t - window)             # keys s < near are far (t - s > window): myopia's cut
                # forward was: out[t] = sum_s att[t, s] v[s]  ->  datt[t, s] = dout[t] . v[s] ; dv[s] += att[t, s] dout[t]
                inner = scale - scale                 # sum_s datt[t, s] att[t, s]
                for s in range(t + 1):                # a far key's dv, dk go to the *_far buffers (the weights only)
                    d = _dot_and_add(dout[b, n, t], v[b, n, s], dv_far[b, n, s] if s < near else dv[b, n, s],
                                     att[b, n, t, s])
                    datt[s] = d
                    inner += d * att[b, n, t, s]
                # forward was: att = softmax(scores) -> dscores = att * (datt - inner)
                # forward was: scores[t, s] = q[t] . k[s] * scale -> dq[t] += dscores k[s] ; dk[s] += dscores q[t]
                for h in range(HS):
                    dq[b, n, t, h] = inner - inner
                for s in range(t + 1):
                    ds = att[b, n, t, s] * (datt[s] - inner) * scale
                    _axpy_pair(dq[b, n, t], k[b, n, s], dk_far[b, n, s] if s < near else dk[b, n, s], q[b, n, t], ds)


@njit(cache=True, fastmath=FAST, inline="always")
def _dot_and_add(x, y, acc, a):  # -> x . y, and acc += a x (one pass over the head dimension)
    d = a - a
    for h in range(x.shape[0]):
        d += x[h] * y[h]
        acc[h] += a * x[h]
    return d


@njit(cache=True, fastmath=FAST, inline="always")
def _axpy_pair(y1, x1, y2, x2, a):  # y1 += a x1 ; y2 += a x2 (one pass over the head dimension)
    for h in range(y1.shape[0]):
        y1[h] += a * x1[h]
        y2[h] += a * x2[h]


def _heads_buffer(q):  # (B, NH, T, HS) -> an empty (B, NH, T, HS) view of a (B, T, NH, HS) array
    # (B, T, NH, HS) memory is what the output projection wants: merging heads is then a free reshape
    B, NH, T, HS = q.shape
    return np.empty((B, T, NH, HS), dtype=q.dtype).transpose(0, 2, 1, 3)


def attention_forward(q, k, v):  # (B, NH, T, HS) x3 -> out (B, NH, T, HS), att (B, NH, T, T)
    B, NH, T, HS = q.shape
    out = _heads_buffer(q)
    att = np.empty((B, NH, T, T), dtype=q.dtype)
    _attention_forward(out, att, q, k, v, q.dtype.type(1.0 / math.sqrt(HS)))
    return out, att


def attention_backward(dout, q, k, v, att, window=None):
    # (B, NH, T, HS), q, k, v, (B, NH, T, T), int or None -> dq, dk, dv (B, NH, T, HS) [, dk_far, dv_far]
    """As ops.attention_backward: window=None returns dq, dk, dv; window=M returns dq, dk, dv, dk_far, dv_far
    with the gradient of key/value pairs t - s > M in the *_far arrays (for the weights only)."""
    B, NH, T, HS = q.shape
    dq = _heads_buffer(q)
    dk = _heads_buffer(q)
    dv = _heads_buffer(q)
    dk[...] = 0
    dv[...] = 0
    scale = q.dtype.type(1.0 / math.sqrt(HS))
    if window is None:
        # no cut: every pair is in the window (T), and "far" would be dk, dv themselves; one compiled kernel
        # for both cases, so window >= T - 1 gives bit-for-bit the ordinary gradient
        _attention_backward(dq, dk, dv, dk, dv, dout, q, k, v, att, scale, T)
        return dq, dk, dv
    dk_far = _heads_buffer(q)
    dv_far = _heads_buffer(q)
    dk_far[...] = 0
    dv_far[...] = 0
    _attention_backward(dq, dk, dv, dk_far, dv_far, dout, q, k, v, att, scale, int(window))
    return dq, dk, dv, dk_far, dv_far


# ----------------------------------------------------------------------------------------------------------
# MLP nonlinearities, elementwise on flat views
@njit(cache=True)
def _relu_forward(out, x):  # (n,) <-, (n,)
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else x[i] - x[i]


@njit(cache=True)
def _relu_backward(dx, dout, x):  # (n,) <-, (n,), (n,)
    for i in range(x.size):
        dx[i] = dout[i] if x[i] > 0 else dout[i] - dout[i]


@njit(cache=True)
def _gelu_forward(out, x, s, a, half, one):  # (n,) <-, (n,)
    for i in range(x.size):
        xi = x[i]
        u = s * (xi + a * xi * xi * xi)
        out[i] = half * xi * (one + math.tanh(u))


@njit(cache=True)
def _gelu_backward(dx, dout, x, s, a, half, one, three):  # (n,) <-, (n,), (n,)
    for i in range(x.size):
        xi = x[i]
        th = math.tanh(s * (xi + a * xi * xi * xi))
        du = s * (one + three * a * xi * xi)
        dx[i] = dout[i] * (half * (one + th) + half * xi * (one - th * th) * du)


def relu_forward(x):  # (...) -> (...)
    out = np.empty_like(x)
    _relu_forward(out.reshape(-1), np.ascontiguousarray(x).reshape(-1))
    return out


def relu_backward(dout, x):  # (...), (...) -> dx (...)
    # forward was: out = max(x, 0)  ->  dx = dout where x > 0 else 0
    dx = np.empty_like(x)
    _relu_backward(dx.reshape(-1), np.ascontiguousarray(dout).reshape(-1), np.ascontiguousarray(x).reshape(-1))
    return dx


def gelu_forward(x):  # (...) -> (...)
    ty = x.dtype.type
    out = np.empty_like(x)
    _gelu_forward(out.reshape(-1), np.ascontiguousarray(x).reshape(-1), ty(GELU_SCALE), ty(GELU_CUBIC),
                  ty(0.5), ty(1.0))
    return out


def gelu_backward(dout, x):  # (...), (...) -> dx (...)
    ty = x.dtype.type
    dx = np.empty_like(x)
    _gelu_backward(dx.reshape(-1), np.ascontiguousarray(dout).reshape(-1), np.ascontiguousarray(x).reshape(-1),
                   ty(GELU_SCALE), ty(GELU_CUBIC), ty(0.5), ty(1.0), ty(3.0))
    return dx


# ----------------------------------------------------------------------------------------------------------
# fused steps: a matmul in BLAS, then everything elementwise around it in one pass over its output, written
# in place (the (N, F) arrays of the MLP are the largest of a step: each pass saved is a trip through memory).
# Their references are at the end of ops.py (same names; tests/test_ops_numba.py checks they agree).
@njit(cache=True)
def _bias_relu_forward(post, pre, b):  # (N, F) <-, (N, F) += b, (F,)
    N, F = pre.shape
    for i in range(N):
        for j in range(F):
            p = pre[i, j] + b[j]
            pre[i, j] = p
            post[i, j] = p if p > 0 else p - p       # p - p: a zero that keeps NaN a NaN


@njit(cache=True)
def _bias_relu_inplace(a, b):  # (N, F) <- relu(a + b), (F,): pre becomes post (the relu MLP keeps post alone)
    # its own kernel: _bias_relu_forward(a, a, b) gives the same numbers, but with its two outputs aliased the
    # loop cannot vectorise (15x slower)
    N, F = a.shape
    for i in range(N):
        for j in range(F):
            p = a[i, j] + b[j]
            a[i, j] = p if p > 0 else p - p


@njit(cache=True)
def _bias_gelu_forward(post, pre, b, s, a, half, one):  # (N, F) <-, (N, F) += b, (F,)
    N, F = pre.shape
    for i in range(N):
        for j in range(F):
            p = pre[i, j] + b[j]
            pre[i, j] = p
            post[i, j] = half * p * (one + math.tanh(s * (p + a * p * p * p)))


@njit(cache=True)
def _relu_backward_bias(d, db, pre):  # (N, F) dpost <- dpre, (F,) +=, (N, F)
    N, F = d.shape
    for i in range(N):                               # row by row, as NumPy's sum(axis=0): the same rounding
        for j in range(F):
            g = d[i, j] if pre[i, j] > 0 else d[i, j] - d[i, j]
            d[i, j] = g
            db[j] += g


@njit(cache=True)
def _gelu_backward_bias(d, db, pre, s, a, half, one, three):  # (N, F) dpost <- dpre, (F,) +=, (N, F)
    N, F = d.shape
    for i in range(N):
        for j in range(F):
            x = pre[i, j]
            th = math.tanh(s * (x + a * x * x * x))
            du = s * (one + three * a * x * x)
            g = d[i, j] * (half * (one + th) + half * x * (one - th * th) * du)
            d[i, j] = g
            db[j] += g


def _bias_act(post, pre, b, act):  # (N, F) <-, (N, F) += b, (F,): post = act(pre + b) in one pass
    if act == "relu":
        _bias_relu_forward(post, pre, b)
    else:
        ty = pre.dtype.type
        _bias_gelu_forward(post, pre, b, ty(GELU_SCALE), ty(GELU_CUBIC), ty(0.5), ty(1.0))


def _act_backward_bias(d, db, pre, act):  # (N, F) dpost <- dpre, (F,) +=, (N, F): dpre = dpost act'(pre)
    if act == "relu":
        _relu_backward_bias(d, db, pre)
    else:
        ty = d.dtype.type
        _gelu_backward_bias(d, db, pre, ty(GELU_SCALE), ty(GELU_CUBIC), ty(0.5), ty(1.0), ty(3.0))


def linear_act_forward(x, W, b, act):  # (..., C), (C, F), (F,), "relu" | "gelu" -> pre, post (..., F)
    # pre = x @ W + b ; post = act(pre): BLAS, then one pass for the bias and the nonlinearity
    pre = _rows(x) @ W                                   # (N, F)
    post = np.empty_like(pre)
    _bias_act(post, pre, b, act)
    shape = x.shape[:-1] + (W.shape[1],)
    return pre.reshape(shape), post.reshape(shape)


def linear_act_backward(dW, db, dpost, x, W, pre, act):
    # (C, F) +=, (F,) +=, (..., F) overwritten, (..., C), (C, F), (..., F), "relu" | "gelu" -> dx (..., C)
    """The backward of linear_act_forward. dpost (contiguous) is overwritten with dpre: the caller's scratch."""
    # forward was: post = act(pre) -> dpre = dpost * act'(pre) ; pre = x @ W + b -> db += sum(dpre), in one pass
    d2 = dpost.reshape(-1, dpost.shape[-1])
    assert np.shares_memory(d2, dpost), "dpost must be contiguous: it is overwritten in place"
    _act_backward_bias(d2, db, _rows(pre), act)
    # -> dW += x.T @ dpre ; dx = dpre @ W.T
    return linear_backward(dW, None, d2, x, W)


@njit(cache=True)
def _bias_residual(out, b, resid):  # (N, D) <- resid + (out + b), (D,), (N, D)
    N, D = out.shape
    for i in range(N):
        for j in range(D):
            out[i, j] = resid[i, j] + (out[i, j] + b[j])


def linear_residual_forward(x, W, b, resid):  # (..., C), (C, D), (D,), (..., D) -> resid + x @ W + b (..., D)
    out = _rows(x) @ W                                   # (N, D)
    _bias_residual(out, b, _rows(resid))
    return out.reshape(resid.shape)


# ----------------------------------------------------------------------------------------------------------
# the whole MLP with its residual add. The hidden layer (N, F) is the largest array of a step (2560 x 256 floats
# per layer at batch 256); a relu MLP keeps one such array instead of two: relu'(pre) is 1 exactly where
# post > 0, so pre is turned into post in place. (Measured: working in row blocks that stay in L2 gained
# nothing here, < 3%, with the allocator keeping freed memory; the blocks were dropped.)
def mlp_forward(x, W_in, b_in, W_out, b_out, resid, act):
    # (..., C), (C, F), (F,), (F, C), (C,), (..., C), "relu" | "gelu"
    # -> pre (..., F) or None, post (..., F), out (..., C)
    """ops.mlp_forward: each matmul in BLAS, then one pass for bias + activation (in place for relu) and one
    for bias + residual."""
    x2 = _rows(x)
    shape = x.shape[:-1] + (W_in.shape[1],)
    if act == "relu":
        pre, post = None, x2 @ W_in                          # (N, F)
        _bias_relu_inplace(post, b_in)
    else:
        pre, post = linear_act_forward(x2, W_in, b_in, act)
        pre = pre.reshape(shape)
    out = linear_residual_forward(post, W_out, b_out, resid)
    return pre, post.reshape(shape), out


def mlp_backward(dW_in, db_in, dW_out, db_out, dout, x, W_in, pre, post, W_out, act):
    # (C, F) +=, (F,) +=, (F, C) +=, (C,) +=, (..., C), (..., C), (C, F), (..., F) or None, (..., F), (F, C), act
    # -> dx (..., C)
    """ops.mlp_backward; relu reads its mask from post (relu'(pre) = 1 where post > 0)."""
    # forward was: out = resid + post @ W_out + b_out  ->  dpost = dout @ W_out.T ; dW_out += post.T @ dout
    dpost = linear_backward(dW_out, db_out, dout, post, W_out)                 # (..., F), a new array: scratch
    # forward was: post = act(pre) ; pre = x @ W_in + b_in
    return linear_act_backward(dW_in, db_in, dpost, x, W_in, post if act == "relu" else pre, act)


# ----------------------------------------------------------------------------------------------------------
# softmax cross-entropy, mean over all tokens (or weighted by a loss mask: ops.py says how); the backward
# fused with the softmax. Row weights w arrive as an (N,) array; no weights is w = 1, the plain mean.
@njit(cache=True, fastmath=FAST, error_model=DIVIDES)
def _cross_entropy_forward(probs, logits, targets, w):  # (N, V) <-, (N, V), (N,), (N,) -> sum of -w log p(target)
    N, V = logits.shape
    total = 0.0                                       # summed in float64: N terms
    for i in range(N):
        mx = logits[i, 0]
        for j in range(1, V):
            if logits[i, j] > mx:
                mx = logits[i, j]                     # each row's own max
        s = mx - mx
        for j in range(V):
            e = math.exp(logits[i, j] - mx)
            probs[i, j] = e
            s += e
        for j in range(V):
            probs[i, j] /= s
        total -= w[i] * (logits[i, targets[i]] - mx - math.log(s))
    return total


@njit(cache=True)
def _cross_entropy_backward(dlogits, probs, targets, scale, w):  # (N, V) <-, (N, V), (N,), _, (N,)
    N, V = probs.shape
    for i in range(N):
        row_scale = scale * w[i]
        for j in range(V):
            dlogits[i, j] = probs[i, j] * row_scale
        dlogits[i, targets[i]] -= row_scale         # w_i (softmax - onehot(target)) / N (or / sum w)


def _row_weights(weights, targets, dtype):  # (B, T) or None -> (N,) weights, their sum (or N)
    if weights is None:
        return np.ones(targets.size, dtype=dtype), targets.size
    total = check_loss_weights(weights, targets)
    return np.ascontiguousarray(weights, dtype=dtype).reshape(-1), total


def cross_entropy_forward(logits, targets, weights=None):  # (B, T, V), (B, T) int, (B, T) -> loss, probs
    l2 = _rows(logits)
    probs = np.empty_like(l2)
    w, total_w = _row_weights(weights, targets, l2.dtype)
    total = _cross_entropy_forward(probs, l2, np.ascontiguousarray(targets).reshape(-1), w)
    return total / total_w, probs.reshape(logits.shape)


def cross_entropy_backward(probs, targets, scale=None, weights=None):  # (B, T, V), (B, T), _, (B, T) -> dlogits
    # forward was: loss = mean_n -log softmax(logits_n)[target_n]  ->  dlogits_n = (probs_n - onehot_n) / N
    ty = probs.dtype.type
    p2 = _rows(probs)
    dlogits = np.empty_like(p2)
    w, total_w = _row_weights(weights, targets, p2.dtype)
    _cross_entropy_backward(dlogits, p2, np.ascontiguousarray(targets).reshape(-1),
                            ty((1.0 / total_w) if scale is None else scale), w)
    return dlogits.reshape(probs.shape)
