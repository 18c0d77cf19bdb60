"""Numba twins of the recurrent time loops in recurrent.py: same arguments, same state dict, same results.

# B batch, T time, H hidden, G gates (rnn 1, gru 3, lstm 4), R rows of the batch handled together

`layer_forward(kind, xp, W_hh, b_hh, h0, c0)` and `layer_backward(kind, dW_hh, db_hh, dh, st, W_hh, lo, hi)`
are drop-in replacements for the NumPy loops in recurrent.py (tested against them in
tests/test_recurrent_numba.py). Read recurrent.py first: the equations and the gradients are the same, only
the order of the work changes, and that order is where the speed comes from.

1. rnn, gru: one kernel call runs a whole layer over all T steps (no Python per step). The batch rows are independent
   through time (row b's state depends only on row b's inputs), so the kernel loops over blocks of R rows
   *outside* the time loop: `prange` over blocks writes disjoint rows, and there is one parallel region per
   layer rather than one per step.
2. The per-step product h_prev @ W_hh.T (the only sequential work). rnn and gru: an explicit loop over a block
   of R = 4 rows: for each gate unit j, four running dot products over k share one load of W_hh[j, k]
   (`_rows_matmul_T`, the one kernel compiled with full fastmath: a dot product vectorises only if its sum
   may be reassociated), ~13 G multiply-adds/s at H = 64. lstm, whose product is the largest (4H gates):
   a Python loop over the T steps, one BLAS sgemm per step into a preallocated (B, 4H) buffer (~35 G
   multiply-adds/s) and one Numba call for the cell (`lstm_step_*_kernel`, serial: BLAS has the threads).
   Measured (CPU time per training step, LSTM H = 64, 1 thread, against the register-tiled kernels this
   replaced): ~1.25x faster at batch 64 and ~1.2x at 256, so it is used at every batch size; two calls per
   step from Python cost ~10 us, the product ~60-250 us. (rnn and gru may gain the same way; not measured.)
3. The backward never scatters into dW_hh from inside the kernel (a `prange` scatter-add into shared rows
   would lose updates). The kernels store each step's pre-activation gradient dhp (B, T, G*H); afterwards
   one BLAS matmul over all steps at once does what the reference does step by step:
       dW_hh += sum_t dhp_t.T @ h_prev_t   ==   dhp.reshape(B*T, G*H).T @ h_prev.reshape(B*T, H)
4. Every elementwise loop runs j from 0 over a whole view (a[:H], a[H:2 * H], ...), and the kernels use
   error_model="numpy" (no ZeroDivisionError branch on `/`): either branch stops LLVM from vectorising.
5. tanh is the only transcendental (sigmoid(x) = 0.5 (1 + tanh(x/2)), as recurrent.py). In float64 it is
   math.tanh (exact, so float64 kernels match the reference to ~1e-12). In float32 it is a rational
   approximation that LLVM can vectorise (libm's tanhf runs one element at a time; Numba has no vector math
   library here): max abs error 4e-7 against float64 tanh over [-10, 10] (float32 epsilon is 1.2e-7), well
   inside the float32 tolerance of 1e-4 abs / 1e-3 rel.

Constants are np.float32: a Python float would promote a float32 kernel to float64 (and is exact in float64).
`fastmath={"contract"}` only lets LLVM fuse a*b+c into one FMA; there are no NaN checks in these kernels.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

ROWS = 4          # R: batch rows per block; each row of W_hh is loaded once per block and step
FASTMATH = {"contract"}


# ----------------------------------------------------------------------------------------------------------
# scalar tanh for kernels: exact in float64, a vectorisable rational approximation in float32
TANH_CLAMP = 7.90531110763549805   # beyond it float32 tanh is +-1 and the polynomial would overshoot
# tanh(x) ~= x * P(x^2) / Q(x^2) on [-TANH_CLAMP, TANH_CLAMP] (the float32 tanh of Eigen and XLA)
TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
          1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)     # highest power first
TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def tanh(x):
    """tanh of one scalar inside a kernel (in plain Python: math.tanh)."""
    return math.tanh(x)


@overload(tanh)
def _tanh_for(x):
    if x != types.float32:
        return lambda x: math.tanh(x)
    c = np.float32(TANH_CLAMP)
    p0, p1, p2, p3, p4, p5, p6 = (np.float32(v) for v in TANH_P)
    q0, q1, q2, q3 = (np.float32(v) for v in TANH_Q)

    def tanh_f32(x):
        x = c if x > c else x
        x = -c if x < -c else x
        x2 = x * x
        p = ((((((p0 * x2 + p1) * x2 + p2) * x2 + p3) * x2 + p4) * x2 + p5) * x2 + p6)
        q = (((q0 * x2 + q1) * x2 + q2) * x2 + q3)
        return x * p / q
    return tanh_f32


@njit(cache=True, fastmath=FASTMATH)
def sigmoid(x):
    # 0.5 * (1 + tanh(x / 2)): the same function as 1 / (1 + exp(-x)), never overflows (as recurrent.py)
    half = np.float32(0.5)
    return half + half * tanh(half * x)


# ----------------------------------------------------------------------------------------------------------
# the sequential product of every step, for a block of R = 4 rows: out[r] += x[r] @ M.T
@njit(cache=True, fastmath=True, error_model="numpy")   # reassociating the sum over k is what lets LLVM vectorise it; no NaN checks
def _rows_matmul_T(out, x, M):  # (4, J) +=, (4, K), (J, K): M's rows and x's rows contiguous
    J, K = M.shape
    for j in range(J):
        s0 = out[0, j]
        s1 = out[1, j]
        s2 = out[2, j]
        s3 = out[3, j]
        for k in range(K):
            w = M[j, k]                      # one load of M serves all four rows
            s0 += x[0, k] * w
            s1 += x[1, k] * w
            s2 += x[2, k] * w
            s3 += x[3, k] * w
        out[0, j] = s0
        out[1, j] = s1
        out[2, j] = s2
        out[3, j] = s3


# activations in place on one contiguous segment. Every elementwise loop in this file runs j from 0 over
# whole views (a[:H], a[H:2 * H], ...): an index like a[H + j] or a loop from a run-time lo makes Numba emit
# a negative-index check per element, and that check alone stops LLVM from vectorising the loop.
@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _sigmoid_(a):  # a[:] = sigmoid(a)
    for j in range(a.shape[0]):
        a[j] = sigmoid(a[j])


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _tanh_(a):  # a[:] = tanh(a)
    for j in range(a.shape[0]):
        a[j] = tanh(a[j])


# ----------------------------------------------------------------------------------------------------------
# forward kernels: write h (and gates, hn | c) for every row and step. Per block of R rows, per step:
#   acc = b_hh + h_prev @ W_hh.T (the sequential product), then the cell, row by row, on contiguous views
@njit(cache=True, parallel=True, fastmath=FASTMATH, error_model="numpy")
def rnn_forward_kernel(h, xp, W_hh, b_hh, h0):  # (B, T, H) out, (B, T, H), (H, H), (H,), (B, H)
    B, T, H = h.shape
    for blk in prange((B + ROWS - 1) // ROWS):
        b0 = blk * ROWS
        nr = min(ROWS, B - b0)
        acc = np.zeros((ROWS, H), h.dtype)
        hprev = np.zeros((ROWS, H), h.dtype)   # rows past B stay zero
        hprev[:nr] = h0[b0:b0 + nr]
        for t in range(T):
            for r in range(ROWS):
                acc[r] = b_hh
            _rows_matmul_T(acc, hprev, W_hh)
            for r in range(nr):
                a, xpt = acc[r], xp[b0 + r, t]
                for j in range(H):
                    a[j] += xpt[j]
                _tanh_(a)                           # h = tanh(xp + h_prev @ W_hh.T + b_hh)
                hprev[r] = a
                h[b0 + r, t] = a


@njit(cache=True, parallel=True, fastmath=FASTMATH, error_model="numpy")
def gru_forward_kernel(h, gates, hn, xp, W_hh, b_hh, h0):
    # (B, T, H) out, (B, T, 3H) out, (B, T, H) out, (B, T, 3H), (3H, H), (3H,), (B, H)
    B, T, H = h.shape
    for blk in prange((B + ROWS - 1) // ROWS):
        b0 = blk * ROWS
        nr = min(ROWS, B - b0)
        acc = np.zeros((ROWS, 3 * H), h.dtype)     # hp = h_prev @ W_hh.T + b_hh, blocks r, z, n
        hprev = np.zeros((ROWS, H), h.dtype)
        hprev[:nr] = h0[b0:b0 + nr]
        for t in range(T):
            for r in range(ROWS):
                acc[r] = b_hh
            _rows_matmul_T(acc, hprev, W_hh)
            for r in range(nr):
                b = b0 + r
                a, hpr, xpt = acc[r], hprev[r], xp[b, t]
                rz, rg, z, n = a[:2 * H], a[:H], a[H:2 * H], a[2 * H:]
                xrz, xn = xpt[:2 * H], xpt[2 * H:]
                hn[b, t] = n                        # hn = W_hn h_prev + b_hn (still in n's slot), for the backward
                for j in range(2 * H):
                    rz[j] += xrz[j]
                _sigmoid_(rz)                       # r, z = sigmoid(xp_rz + hp_rz)
                for j in range(H):
                    n[j] = xn[j] + rg[j] * n[j]
                _tanh_(n)                           # n = tanh(xp_n + r * hn)
                for j in range(H):                  # h = (1 - z) n + z h_prev  =  n + z (h_prev - n)
                    hpr[j] = n[j] + z[j] * (hpr[j] - n[j])
                gates[b, t] = a
                h[b, t] = hpr


# ----------------------------------------------------------------------------------------------------------
# backward kernels: steps hi-1 down to lo; write dxp (and dhp for gru) for every row and step in the window.
# dh (B, hi-lo, H) is the gradient from above; the gradient reaching the state before step lo is dropped.
# dnext[r] = dL/dh_t arriving through step t+1 (zero beyond the last step):
#   forward was: hp = h_prev @ W_hh.T  ->  dh_prev += dhp @ W_hh  =  dhp @ (W_hh.T).T, hence W_hhT
@njit(cache=True, parallel=True, fastmath=FASTMATH, error_model="numpy")
def rnn_backward_kernel(dxp, dh, h, W_hhT, lo):  # (B, S, H) out, (B, S, H), (B, T, H), (H, H), lo; S = hi-lo
    B, S, H = dh.shape
    one = np.float32(1.0)
    for blk in prange((B + ROWS - 1) // ROWS):
        b0 = blk * ROWS
        nr = min(ROWS, B - b0)
        dnext = np.zeros((ROWS, H), dh.dtype)
        da = np.zeros((ROWS, H), dh.dtype)
        for s in range(S - 1, -1, -1):
            t = lo + s
            for r in range(nr):
                b = b0 + r
                dar, dnr, dht, ht = da[r], dnext[r], dh[b, s], h[b, t]
                for j in range(H):                  # forward was: h = tanh(a)  ->  da = dh (1 - h^2)
                    dar[j] = (dht[j] + dnr[j]) * (one - ht[j] * ht[j])
                    dnr[j] = 0
                dxp[b, s] = dar
            _rows_matmul_T(dnext, da, W_hhT)


@njit(cache=True, parallel=True, fastmath=FASTMATH, error_model="numpy")
def gru_backward_kernel(dxp, dhp, dh, h, h0, gates, hn, W_hhT, lo):
    # (B, S, 3H) out, (B, S, 3H) out, (B, S, H), (B, T, H), (B, H), (B, T, 3H), (B, T, H), (H, 3H), lo
    B, S, H = dh.shape
    one = np.float32(1.0)
    for blk in prange((B + ROWS - 1) // ROWS):
        b0 = blk * ROWS
        nr = min(ROWS, B - b0)
        dnext = np.zeros((ROWS, H), dh.dtype)
        d = np.zeros((ROWS, 3 * H), dh.dtype)     # dhp of the block's rows at this step
        dan = np.empty(H, dh.dtype)
        for s in range(S - 1, -1, -1):
            t = lo + s
            for r in range(nr):
                b = b0 + r
                hp = h[b, t - 1] if t > 0 else h0[b]
                g, hnt, dht, dnr = gates[b, t], hn[b, t], dh[b, s], dnext[r]
                rg, z, n = g[:H], g[H:2 * H], g[2 * H:]
                dar, daz, dhn = d[r, :H], d[r, H:2 * H], d[r, 2 * H:]
                for j in range(H):
                    dhj = dht[j] + dnr[j]
                    # forward was: h = (1 - z) n + z h_prev  ->  dn = dh (1 - z) ; dz = dh (h_prev - n)
                    dn = dhj * (one - z[j])
                    dz = dhj * (hp[j] - n[j])
                    dnr[j] = dhj * z[j]                 # h_prev's direct path
                    # forward was: n = tanh(xp_n + r hn)  ->  dan = dn (1 - n^2) ; dr = dan hn ; dhn = dan r
                    dan[j] = dn * (one - n[j] * n[j])
                    dr = dan[j] * hnt[j]
                    dhn[j] = dan[j] * rg[j]
                    # forward was: r, z = sigmoid(xp_rz + hp_rz)  ->  da = d gate * gate (1 - gate)
                    dar[j] = dr * rg[j] * (one - rg[j])
                    daz[j] = dz * z[j] * (one - z[j])
                dxp[b, s, :2 * H] = d[r, :2 * H]        # dxp = dhp except in the n block: dan, not dhn
                dxp[b, s, 2 * H:] = dan
                dhp[b, s] = d[r]
            _rows_matmul_T(dnext, d, W_hhT)            # h_prev's path through the gates and hn


# ----------------------------------------------------------------------------------------------------------
# LSTM, the other way round: the per-step product in BLAS, the cell in Numba. A Python loop over the T steps
# makes one BLAS sgemm (B, H) @ (H, 4H) and one cell-kernel call per step (see point 2 of the module notes).
@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def lstm_step_forward_kernel(h, c, gates, a, xp, b_hh, c0, t):
    # (B, T, H) out at t, (B, T, H) out at t, (B, T, 4H) out at t, a (B, 4H) = h_prev @ W_hh.T,
    # xp (B, T, 4H), (4H,), (B, H): step t of the cell, the product already done.
    # One loop per output segment: a loop that writes one array and reads a few vectorises (LLVM checks
    # that they do not overlap); one loop writing all of i, f, g, o, c, h does not.
    B, T, H = h.shape
    for b in range(B):
        ab, xpt, gt = a[b], xp[b, t], gates[b, t]
        cp = c[b, t - 1] if t > 0 else c0[b]
        ct, ht = c[b, t], h[b, t]
        for j in range(2 * H):              # i, f = sigmoid(xp + h_prev @ W_hh.T + b_hh)
            gt[j] = sigmoid(xpt[j] + ab[j] + b_hh[j])
        g, xg, ag, bg = gt[2 * H:3 * H], xpt[2 * H:3 * H], ab[2 * H:3 * H], b_hh[2 * H:3 * H]
        for j in range(H):                  # g = tanh(...)
            g[j] = tanh(xg[j] + ag[j] + bg[j])
        o, xo, ao, bo = gt[3 * H:], xpt[3 * H:], ab[3 * H:], b_hh[3 * H:]
        for j in range(H):                  # o = sigmoid(...)
            o[j] = sigmoid(xo[j] + ao[j] + bo[j])
        i, f = gt[:H], gt[H:2 * H]
        for j in range(H):                  # c = f c_prev + i g
            ct[j] = f[j] * cp[j] + i[j] * g[j]
        for j in range(H):                  # h = o tanh(c)
            ht[j] = o[j] * tanh(ct[j])


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def lstm_step_backward_kernel(dxp, dcnext, dnext, dh, c, c0, gates, t, s):
    # dxp (B, S, 4H) out at s; dcnext (B, H) dL/dc_t through step t+1, overwritten with dL/dc_{t-1};
    # dnext (B, H) dL/dh_t through step t+1; dh (B, S, H), c (B, T, H), c0 (B, H), gates (B, T, 4H); t = lo + s.
    # As the forward: one loop per output, so that each vectorises.
    B, S, H = dh.shape
    one = np.float32(1.0)
    dht = np.empty(H, dh.dtype)               # dL/dh_t, both paths
    tc = np.empty(H, dh.dtype)                # tanh(c_t)
    dc = np.empty(H, dh.dtype)                # dL/dc_t, both paths
    for b in range(B):
        cp = c[b, t - 1] if t > 0 else c0[b]
        g, d, dhs, dnr, dcr, ct = gates[b, t], dxp[b, s], dh[b, s], dnext[b], dcnext[b], c[b, t]
        i, f, gg, o = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:]
        di, df, dg, do = d[:H], d[H:2 * H], d[2 * H:3 * H], d[3 * H:]
        for j in range(H):
            dht[j] = dhs[j] + dnr[j]
        for j in range(H):
            tc[j] = tanh(ct[j])
        # forward was: h = o tanh(c)  ->  do = dh tanh(c) ; dc += dh o (1 - tanh(c)^2)
        for j in range(H):
            dc[j] = dcr[j] + dht[j] * o[j] * (one - tc[j] * tc[j])
        # forward was: i, f, o = sigmoid(a_ifo) ; g = tanh(a_g)  ->  da = d gate * gate'
        for j in range(H):
            do[j] = dht[j] * tc[j] * o[j] * (one - o[j])
        # forward was: c = f c_prev + i g  ->  df = dc c_prev ; dc_prev = dc f ; di = dc g ; dg = dc i
        for j in range(H):
            di[j] = dc[j] * gg[j] * i[j] * (one - i[j])
        for j in range(H):
            df[j] = dc[j] * cp[j] * f[j] * (one - f[j])
        for j in range(H):
            dg[j] = dc[j] * i[j] * (one - gg[j] * gg[j])
        for j in range(H):
            dcr[j] = dc[j] * f[j]


def lstm_forward(h, c, gates, xp, W_hh, b_hh, h0, c0):
    # (B, T, H) out, (B, T, H) out, (B, T, 4H) out, (B, T, 4H), (4H, H), (4H,), (B, H), (B, H)
    # serial cell kernel: with n threads, BLAS has them for the product (threads.py)
    B, T, H = h.shape
    a = np.empty((B, 4 * H), h.dtype)                 # (B, 4H) the step's product, reused every step
    W_hhT = W_hh.T                                    # a view: BLAS reads it transposed, no copy
    for t in range(T):
        np.matmul(h0 if t == 0 else h[:, t - 1], W_hhT, out=a)     # a = h_prev @ W_hh.T
        lstm_step_forward_kernel(h, c, gates, a, xp, b_hh, c0, t)


def lstm_backward(dxp, dh, h0, c, c0, gates, W_hh, lo):
    # (B, S, 4H) out, (B, S, H), (B, H), (B, T, H), (B, H), (B, T, 4H), (4H, H), lo; S = hi-lo
    B, S, H = dh.shape
    dnext = np.zeros((B, H), dh.dtype)                # dL/dh_t through step t+1: zero beyond the last step
    dcnext = np.zeros((B, H), dh.dtype)               # dL/dc_t through step t+1
    for s in range(S - 1, -1, -1):
        lstm_step_backward_kernel(dxp, dcnext, dnext, dh, c, c0, gates, lo + s, s)
        if s > 0:                                     # before step lo the gradient is dropped: skip its product
            # forward was: a = xp + h_prev @ W_hh.T + b_hh  ->  dh_prev = da @ W_hh
            np.matmul(dxp[:, s], W_hh, out=dnext)


# ----------------------------------------------------------------------------------------------------------
# the drop-in replacements for recurrent.layer_forward / recurrent.layer_backward
def layer_forward(kind, xp, W_hh, b_hh, h0=None, c0=None):  # (B, T, G*H), (G*H, H), (G*H,), (B, H) -> state
    """As recurrent.layer_forward: the layer state dict h, gates (gru, lstm), hn (gru), c (lstm), h0, c0."""
    B, T, _ = xp.shape
    H = W_hh.shape[1]
    dt = xp.dtype
    xp = np.ascontiguousarray(xp)
    h0 = np.zeros((B, H), dt) if h0 is None else np.ascontiguousarray(h0, dt)
    c0 = np.zeros((B, H), dt) if c0 is None else np.ascontiguousarray(c0, dt)
    W_hh, b_hh = np.ascontiguousarray(W_hh), np.ascontiguousarray(b_hh)
    st = dict(h0=h0, c0=c0, h=np.empty((B, T, H), dt))
    if kind == "rnn":
        rnn_forward_kernel(st["h"], xp, W_hh, b_hh, h0)
    elif kind == "gru":
        st["gates"], st["hn"] = np.empty(xp.shape, dt), np.empty((B, T, H), dt)
        gru_forward_kernel(st["h"], st["gates"], st["hn"], xp, W_hh, b_hh, h0)
    else:
        st["gates"], st["c"] = np.empty(xp.shape, dt), np.empty((B, T, H), dt)
        lstm_forward(st["h"], st["c"], st["gates"], xp, W_hh, b_hh, h0, c0)
    return st


def layer_backward(kind, dW_hh, db_hh, dh, st, W_hh, lo=0, hi=None):
    # (G*H, H) +=, (G*H,) +=, dh (B, hi-lo, H), layer state, (G*H, H) -> dxp (B, hi-lo, G*H)
    """As recurrent.layer_backward: BPTT through steps hi-1 down to lo; the state before step lo is held fixed."""
    h = st["h"]
    T = h.shape[1]
    hi = T if hi is None else hi
    B, H = st["h0"].shape
    GH = W_hh.shape[0]
    dh = np.ascontiguousarray(dh)
    W_hhT = np.ascontiguousarray(W_hh.T)      # (H, G*H): the backward's product runs along its rows
    dxp = np.empty((B, hi - lo, GH), dh.dtype)
    dhp = dxp                                  # gradient of hp = h_prev @ W_hh.T + b_hh (rnn, lstm: = dxp)
    if kind == "rnn":
        rnn_backward_kernel(dxp, dh, h, W_hhT, lo)
    elif kind == "gru":
        dhp = np.empty_like(dxp)               # gru: the n block differs, dhn = dan * r
        gru_backward_kernel(dxp, dhp, dh, h, st["h0"], st["gates"], st["hn"], W_hhT, lo)
    else:
        lstm_backward(dxp, dh, st["h0"], st["c"], st["c0"], st["gates"], W_hh, lo)
    # forward was (every step): hp = h_prev @ W_hh.T + b_hh  ->  dW_hh += dhp.T @ h_prev ; db_hh += sum(dhp)
    # summed over the steps lo..hi-1 in one matmul; h_prev of step t is h[t-1] (h0 for t = 0)
    if lo == 0:
        h_prev = np.concatenate([st["h0"][:, None], h[:, :hi - 1]], axis=1)   # (B, hi, H)
    else:
        h_prev = h[:, lo - 1:hi - 1]                                          # (B, hi-lo, H)
    dhp2 = dhp.reshape(-1, GH)                                                # (B*(hi-lo), G*H)
    dW_hh += dhp2.T @ h_prev.reshape(-1, H)
    db_hh += np.ones(dhp2.shape[0], dhp.dtype) @ dhp2      # column sums in BLAS, as ops_numba.linear_backward
    return dxp
