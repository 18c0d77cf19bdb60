"""Probes: how much of the exact belief state, and of the k-step future, a network's activations hold.

This is where the two halves of tinyseq meet: activations come from `tinyseq.nn`, exact targets (beliefs,
k-step Bayes distributions) from `tinyseq.beliefs`. This module imports neither (only the one softmax of
tinyseq/nn/ops.py); it is measurement math on plain arrays, so every number in a report can be recomputed from
arrays saved to disk.

Shape letters: N rows (one row = one (sequence, position) pair), D activation width, S hidden states (belief
coordinates), V vocabulary, NSEQ sequences, T positions, B prefixes, K folds.

Weights. Every fit and every metric takes optional row weights `w (N,)`, non-negative, normalised inside to
sum to 1. With `w = probability of the row's sequence` the sums over an enumerated set of sequences become
exact expectations under the process ("probability-weighted regression"): weighting a row by 2 is the same as
writing it twice. `w=None` means uniform.

Contents, in pipeline order:
    fit_affine / predict_affine              affine least-squares probe, optional ridge (intercept free)
    affine_fit_operator                      the same fit as a linear map of the targets (cheap refits)
    r2_score / mse / mse_by_coordinate / rmse
    split_sequences / ridge_grid / group_folds / choose_ridge_cv
                                             20%/80% split by sequence, ridge by k-fold CV
    pairwise_distance_r2                     do probed distances follow belief or next-token distances?
    softmax_loss_grad / fit_logistic / choose_l2_cv / predict_proba
                                             multinomial logistic regression (L-BFGS) for the k-step probe
    expected_accuracy / bayes_expected_accuracy / constant_baseline_accuracy / kl_bits / fraction_of_gain
    rollout_kstep                            the model's own k-step marginal by chaining its next-token output
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.nn.ops import log_softmax

CONST_REL = 1e-10  # a column whose weighted std is below CONST_REL * |mean| is constant (float noise only)


# ----------------------------------------------------------------------------------------------------------
# weights and standardisation
def _weights(w, n):  # (N,) or None, int -> (N,) float64 summing to 1
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise TinyseqError(f"weights have {w.shape[0]} entries but there are {n} rows")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise TinyseqError("weights must be finite and non-negative (e.g. sequence probabilities)")
    total = w.sum()
    if total <= 0:
        raise TinyseqError("weights sum to zero: at least one row needs a positive weight")
    return w / total


def _moments(X, w):  # (N, D), (N,) summing to 1 -> mean (D,), scale (D,), const (D,) bool
    # Weighted mean and std of each column. A constant column (a one-hot slot never used, a dead ReLU, a bias
    # feature) gets scale 1 and is flagged so callers zero it: centring leaves only rounding noise there.
    mean = w @ X
    var = w @ (X - mean) ** 2
    scale = np.sqrt(var)
    const = scale <= CONST_REL * np.abs(mean)  # also catches an all-zero column (0 <= 0)
    scale[const] = 1.0
    return mean, scale, const


def _standardise(X, Y, w):
    # -> Zw (N, D), Yw (N, S), x_mean (D,), x_scale (D,), y_mean (S,)
    # Zw = sqrt(w) * (X - x_mean) / x_scale and Yw = sqrt(w) * (Y - y_mean): weighted least squares on the
    # centred data is ordinary least squares on these, and centring is what leaves the intercept unpenalised.
    x_mean, x_scale, const = _moments(X, w)
    y_mean = w @ Y
    sw = np.sqrt(w)[:, None]
    Zw = (X - x_mean) / x_scale
    Zw[:, const] = 0.0
    Zw *= sw
    Yw = (Y - y_mean) * sw
    return Zw, Yw, x_mean, x_scale, y_mean


def _solve_standardised(Zw, Yw, ridges, gram=None):  # (N, D), (N, S), [r...] -> [(D, S)...]
    # ridge 0: minimum-norm least squares by SVD (np.linalg.lstsq), so rank-deficient X (one-hot embeddings,
    # collinear hooks, constant columns) gives the minimum-norm solution instead of a blow-up.
    # ridge r > 0: (Zw'Zw + r I) coef = Zw'Yw; the diagonal of Zw'Zw is 1 for every live column, so r is a
    # well-conditioned, dimensionless shift. The Gram matrix is formed once for all r > 0.
    coefs = []
    for r in ridges:
        if r == 0:
            coefs.append(np.linalg.lstsq(Zw, Yw, rcond=None)[0])
            continue
        if gram is None:
            gram = Zw.T @ Zw  # (D, D)
            rhs = Zw.T @ Yw  # (D, S)
        D = gram.shape[0]
        coefs.append(np.linalg.solve(gram + r * np.eye(D), rhs))
    return coefs


def _unstandardise(coef, x_mean, x_scale, y_mean):  # (D, S), (D,), (D,), (S,) -> W (D, S), b (S,)
    # forward was: y = ((x - x_mean) / x_scale) @ coef + y_mean  ->  W = coef / x_scale ; b = y_mean - x_mean @ W
    W = coef / x_scale[:, None]
    b = y_mean - x_mean @ W
    return W, b


# ----------------------------------------------------------------------------------------------------------
# 1. affine least-squares probe
def fit_affine(X, Y, w=None, ridge=0.0):  # (N, D), (N, S), (N,) or None -> W (D, S), b (S,)
    """Weighted affine least squares: the probe  y_hat = x @ W + b.

    Minimises  sum_n w_n ||Y_n - X_n W - b||^2 + ridge * ||W_std||^2  (w normalised to sum 1), where W_std are
    the coefficients on standardised features (each column centred and divided by its weighted std), so
    `ridge` is dimensionless: a feature uncorrelated with the others has its coefficient shrunk by
    1 / (1 + ridge). The intercept b is never penalised. ridge=0 gives the minimum-norm least-squares fit,
    which is well defined for rank-deficient X (one-hot embeddings, collinear or constant columns).
    Computed in float64 whatever the input dtype.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise TinyseqError(f"fit_affine needs X (N, D) and Y (N, S) with the same N; got {X.shape}, {Y.shape}")
    if ridge < 0:
        raise TinyseqError(f"ridge must be >= 0, got {ridge}")
    w = _weights(w, X.shape[0])
    Zw, Yw, x_mean, x_scale, y_mean = _standardise(X, Y, w)
    (coef,) = _solve_standardised(Zw, Yw, [float(ridge)])
    return _unstandardise(coef, x_mean, x_scale, y_mean)


def affine_fit_operator(X, w=None, ridge=0.0):  # (N, D), (N,) or None -> A (D, N), x_mean (D,)
    """fit_affine(X, Y, w, ridge) as a linear map of the targets, to refit many Y on the same X cheaply:

        y_mean = w @ Y ;  W = A @ (Y - y_mean) ;  b = y_mean - x_mean @ W      (w normalised to sum 1)

    A holds the standardisation, the weights and the solve (one SVD for ridge 0, where lstsq's minimum-norm
    solution is the pseudo-inverse's; one (D, D) solve for ridge > 0), so each refit is one (D, N) x (N, S)
    product. Same minimiser as fit_affine (tested against it)."""
    X = np.asarray(X, dtype=np.float64)
    w = _weights(w, X.shape[0])
    x_mean, x_scale, const = _moments(X, w)
    sw = np.sqrt(w)
    Zw = (X - x_mean) / x_scale * sw[:, None]                        # (N, D) as in _standardise
    Zw[:, const] = 0.0
    if ridge == 0:
        A = np.linalg.pinv(Zw, rcond=np.finfo(np.float64).eps * max(Zw.shape))   # lstsq's cutoff
    else:
        A = np.linalg.solve(Zw.T @ Zw + ridge * np.eye(Zw.shape[1]), Zw.T)
    # forward was: coef = A_std @ (sqrt(w) * (Y - y_mean)) ; W = coef / x_scale
    return A * sw[None, :] / x_scale[:, None], x_mean


def predict_affine(X, W, b):  # (N, D), (D, S), (S,) -> (N, S)
    """The probe's output x @ W + b."""
    return np.asarray(X, dtype=np.float64) @ W + b


# ----------------------------------------------------------------------------------------------------------
# 2. metrics (all weighted; w=None is uniform)
def _sq_err(Y, Yhat):  # (N, S), (N, S) -> (N,) squared Euclidean error per row
    d = np.asarray(Y, dtype=np.float64) - np.asarray(Yhat, dtype=np.float64)
    return (d * d).sum(axis=1)


def r2_score(Y, Yhat, w=None):  # (N, S), (N, S), (N,) -> float
    """1 - SSE / SST, both summed over coordinates: SSE = sum_n w_n ||Y_n - Yhat_n||^2,
    SST = sum_n w_n ||Y_n - mean_w(Y)||^2. 1 is perfect, 0 is no better than predicting the (weighted) mean
    of the evaluated targets, negative is worse. NaN when the targets are constant (SST = 0)."""
    Y = np.asarray(Y, dtype=np.float64)
    w = _weights(w, Y.shape[0])
    sse = w @ _sq_err(Y, Yhat)
    sst = w @ _sq_err(Y, w @ Y)
    return float(1.0 - sse / sst) if sst > 0 else float("nan")


def mse(Y, Yhat, w=None):  # (N, S), (N, S), (N,) -> float
    """Mean squared error per coordinate: sum_n w_n ||Y_n - Yhat_n||^2 / S (the number the papers quote)."""
    Y = np.asarray(Y, dtype=np.float64)
    return float(_weights(w, Y.shape[0]) @ _sq_err(Y, Yhat) / Y.shape[1])


def mse_by_coordinate(Y, Yhat, w=None):  # (N, S), (N, S), (N,) -> (S,)
    """Weighted mean squared error of each coordinate separately; its mean is `mse`."""
    d = np.asarray(Y, dtype=np.float64) - np.asarray(Yhat, dtype=np.float64)
    return _weights(w, d.shape[0]) @ (d * d)


def rmse(Y, Yhat, w=None):  # -> float
    """sqrt(mse): the typical error of one belief coordinate, in probability units."""
    return math.sqrt(mse(Y, Yhat, w))


# ----------------------------------------------------------------------------------------------------------
# 3. split by sequence, ridge by cross-validation, the probe row
def split_sequences(n_seq, frac_fit=0.2, seed=0):  # int -> fit (n_fit,), eval (n_eval,) sorted indices
    """Random split of sequence indices: `frac_fit` of them to fit on, the rest to evaluate on.

    Splitting by sequence (not by row) keeps every position of a sequence on one side, so the evaluation never
    sees a prefix whose extension was fitted. frac_fit=1.0 means in-sample: fit and evaluate on all.
    """
    if frac_fit == 1.0:
        idx = np.arange(n_seq)
        return idx, idx
    if not 0.0 < frac_fit < 1.0:
        raise TinyseqError(f"frac_fit must be in (0, 1] (0.2 = fit on 20%, evaluate on 80%), got {frac_fit}")
    if n_seq < 2:
        raise TinyseqError("a held-out evaluation needs at least 2 sequences (or use frac_fit=1.0)")
    n_fit = min(n_seq - 1, max(1, int(round(frac_fit * n_seq))))
    perm = np.random.default_rng((seed, 0)).permutation(n_seq)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit:])


def ridge_grid(n_values=9, lo=1e-6, hi=1e2):  # -> (1 + n_values,)
    """0 followed by log-spaced ridges from lo to hi. `fit_affine` standardises features, so these are scaled
    to the data: relative to each feature's own variance (1e-6: barely there; 1e2: strong shrinkage)."""
    return np.concatenate([[0.0], np.logspace(math.log10(lo), math.log10(hi), n_values)])


def group_folds(groups, n_folds=5, seed=0):  # (N,) group id of each row -> fold (N,) int in 0..k-1, k
    """Balanced folds made of whole groups (a sequence is never on both sides), seeded."""
    uniq, gid = np.unique(np.asarray(groups), return_inverse=True)
    k = min(n_folds, len(uniq))
    if k < 2:
        raise TinyseqError("cross-validation needs at least 2 sequences in the fit set")
    fold_of_group = np.random.default_rng((seed, 1)).permutation(len(uniq)) % k  # (n_groups,) balanced folds
    return fold_of_group[gid.reshape(-1)], k


def choose_ridge_cv(X, Y, groups, w=None, grid=None, n_folds=5, seed=0):
    # (N, D), (N, S), (N,) int, (N,) -> best ridge float, cv_mse (len(grid),)
    """Ridge with the smallest K-fold cross-validated weighted MSE.

    Folds are made of whole groups (pass the sequence id of each row), so a sequence is never on both sides.
    Each fold standardises its own training part; the held-out error is weighted by w. Ties go to the
    smaller ridge. Returns the chosen ridge and the CV MSE per coordinate of every grid value.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    grid = ridge_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    w = _weights(w, X.shape[0])
    fold, k = group_folds(groups, n_folds, seed)
    sse = np.zeros(len(grid))
    for f in range(k):
        tr, te = fold != f, fold == f
        if w[tr].sum() <= 0 or w[te].sum() <= 0:
            continue
        wt = w[tr] / w[tr].sum()
        Zw, Yw, x_mean, x_scale, y_mean = _standardise(X[tr], Y[tr], wt)
        for i, coef in enumerate(_solve_standardised(Zw, Yw, grid)):
            W, b = _unstandardise(coef, x_mean, x_scale, y_mean)
            sse[i] += w[te] @ _sq_err(Y[te], X[te] @ W + b)
    cv_mse = sse / Y.shape[1]
    return float(grid[int(np.argmin(cv_mse))]), cv_mse


# ----------------------------------------------------------------------------------------------------------
# 5. pairwise-distance analysis
def pairwise_distance_r2(P, Y, Q, n_pairs=20000, seed=0, w=None):
    # probed (N, S), true beliefs (N, S), next-token distributions (N, V) -> dict
    """Do distances between probed beliefs follow distances between true beliefs, or between predictions?

    Exactly what is computed: draw `n_pairs` pairs (i, j), i != j, with each index drawn independently from
    the rows (uniformly, or with probability w if given; seeded). For each pair take Euclidean distances
    d_P = ||P_i - P_j||, d_Y = ||Y_i - Y_j||, d_Q = ||Q_i - Q_j||. Report
        r2_true = R^2 of the least-squares line d_P ~ a + c d_Y  (= squared Pearson correlation of d_P, d_Y)
        r2_next = R^2 of the least-squares line d_P ~ a + c d_Q  (= squared Pearson correlation of d_P, d_Q)
    Duplicate rows (many sequences share a belief) are kept, so pairs count with the weight the data gives
    them. NaN if a distance vector is constant. Published for rrxor: r2_true 0.95, r2_next 0.31.
    """
    P, Y, Q = (np.asarray(a, dtype=np.float64) for a in (P, Y, Q))
    n = P.shape[0]
    if not (Y.shape[0] == Q.shape[0] == n) or n < 2:
        raise TinyseqError("pairwise_distance_r2 needs P, Y, Q with the same number (>= 2) of rows")
    i, j = _draw_pairs(n, n_pairs, None if w is None else _weights(w, n), np.random.default_rng((seed, 3)))
    dP = np.linalg.norm(P[i] - P[j], axis=1)  # (n_pairs,)
    dY = np.linalg.norm(Y[i] - Y[j], axis=1)
    dQ = np.linalg.norm(Q[i] - Q[j], axis=1)
    return dict(r2_true=_corr2(dP, dY), r2_next=_corr2(dP, dQ), n_pairs=len(i))


def _draw_pairs(n, n_pairs, p, rng):  # -> i (M,), j (M,) with i != j, M <= n_pairs
    # Both indices drawn independently (uniformly or with probabilities p); pairs with i == j are redrawn
    # (a few rounds suffice unless nearly all weight sits on one row; pairs still equal then are dropped).
    if p is not None and np.count_nonzero(p) < 2:
        raise TinyseqError("pairwise distances need at least 2 rows with positive weight")
    i = rng.choice(n, size=n_pairs, p=p)
    j = rng.choice(n, size=n_pairs, p=p)
    for _ in range(100):
        same = np.flatnonzero(i == j)
        if len(same) == 0:
            break
        j[same] = rng.choice(n, size=len(same), p=p)
    keep = i != j
    return i[keep], j[keep]


def _corr2(a, b):  # (M,), (M,) -> squared Pearson correlation, NaN if either is constant
    a = a - a.mean()
    b = b - b.mean()
    den = (a @ a) * (b @ b)
    return float((a @ b) ** 2 / den) if den > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------
# 6. multinomial logistic regression (softmax regression)
def _targets(y, N, V):  # (N,) int or (N, V) probabilities -> (N, V) float64
    y = np.asarray(y)
    if y.ndim == 2:
        if y.shape != (N, V):
            raise TinyseqError(f"soft targets must have shape {(N, V)}, got {y.shape}")
        return np.asarray(y, dtype=np.float64)
    if y.shape != (N,) or y.size and (y.min() < 0 or y.max() >= V):
        raise TinyseqError(f"labels must be (N,) = ({N},) integers in [0, {V})")
    Yt = np.zeros((N, V))
    Yt[np.arange(N), y] = 1.0
    return Yt


def softmax_loss_grad(W, b, X, y, w=None, l2=0.0):
    # (D, V), (V,), (N, D), (N,) int or (N, V), (N,) -> loss float, dW (D, V), db (V,)
    """Weighted mean cross-entropy (nats) of softmax(X W + b) against y, plus (l2 / 2) ||W||^2, and its gradient.

    y is either integer labels (N,) or target distributions (N, V) (soft labels, e.g. exact k-step
    probabilities); both give  loss = -sum_n w_n sum_x y_nx log p_nx  with w normalised to sum 1.
    """
    X = np.asarray(X, dtype=np.float64)
    N, V = X.shape[0], W.shape[1]
    w = _weights(w, N)
    Yt = _targets(y, N, V)
    logp = log_softmax(X @ W + b)  # (N, V)
    loss = -(w @ (Yt * logp).sum(axis=1)) + 0.5 * l2 * np.sum(W * W)
    # forward was: loss = -sum_n w_n y_n . log softmax(z_n)  ->  dz_n = w_n (p_n - y_n)  (for sum_x y_nx = 1)
    G = w[:, None] * (np.exp(logp) - Yt)  # (N, V)
    dW = X.T @ G + l2 * W
    db = G.sum(axis=0)
    return float(loss), dW, db


def _lbfgs(fun, x0, max_iter, tol, memory=10):  # fun(x) -> (f, g); deterministic L-BFGS, Armijo backtracking
    # The first direction is -g with a unit step: the caller's coordinates are preconditioned so that this is
    # about a Newton step; later steps use the curvature pairs (s, y) gathered on the way.
    x = x0.copy()
    f, g = fun(x)
    S, Yd = [], []  # the last `memory` steps s = x' - x and gradient changes y = g' - g
    for _ in range(max_iter):
        if np.max(np.abs(g)) <= tol:
            break
        # two-loop recursion: d = -H g with H the L-BFGS inverse-Hessian estimate
        q = g.copy()
        alphas = []
        for s, yv in reversed(list(zip(S, Yd))):
            a = (s @ q) / (yv @ s)
            q -= a * yv
            alphas.append(a)
        if S:
            q *= (S[-1] @ Yd[-1]) / (Yd[-1] @ Yd[-1])
        for (s, yv), a in zip(zip(S, Yd), reversed(alphas)):
            q += (a - (yv @ q) / (yv @ s)) * s
        d = -q
        slope = g @ d
        if slope >= 0:  # not a descent direction (should not happen): restart from a short gradient step
            S, Yd = [], []
            d = -g / max(1.0, np.linalg.norm(g))
            slope = g @ d
        step = 1.0
        for _ in range(40):
            f_new, g_new = fun(x + step * d)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break  # no decrease possible at float precision: converged as far as it goes
        s, yv = step * d, g_new - g
        x, f_old, f, g = x + s, f, f_new, g_new
        if s @ yv > 1e-12 * np.linalg.norm(s) * np.linalg.norm(yv):  # keep the curvature pair only if positive
            S.append(s)
            Yd.append(yv)
            if len(S) > memory:
                S.pop(0)
                Yd.pop(0)
        if f_old - f <= 1e-15 * max(1.0, abs(f)):
            break
    return x


def _correlation(X, w, x_mean, x_scale, cols, chunk=16384):  # -> (L, L) for the L = len(cols) columns
    # Weighted covariance of the standardised columns `cols` (their correlation matrix), accumulated over
    # row chunks of centred data: no cancellation from large means, no full-size standardised copy of X.
    C = np.zeros((len(cols), len(cols)))
    for s in range(0, X.shape[0], chunk):
        Z = (X[s:s + chunk][:, cols] - x_mean[cols]) / x_scale[cols]  # (chunk, L)
        C += Z.T @ (w[s:s + chunk, None] * Z)
    return C


def fit_logistic(X, y, V, w=None, l2=1e-4, max_iter=500, tol=1e-7, init=None):
    # (N, D), (N,) int or (N, V), int, (N,), (W (D, V), b (V,)) or None -> W (D, V), b (V,)
    """Multinomial logistic regression: p(x | features) = softmax(features @ W + b), weighted, L2-regularised.

    The objective, on standardised features (weighted mean 0, std 1 per column; constant columns get weight 0,
    so `l2` is dimensionless):
        mean_w cross-entropy + (l2 / 2) ||W_std||^2     (intercept unpenalised)
    For l2 > 0 it is strictly convex in W, so there is one optimum and the method below is deterministic.
    y: integer labels (N,) or target distributions (N, V) (soft labels give the same optimum as many
    sampled labels, without the sampling noise).

    Method: L-BFGS (memory 10, Armijo backtracking) from zero (or from `init`, a fit's raw W, b), stopped when
    the largest gradient entry is below `tol` or after `max_iter` iterations, in preconditioned coordinates.
    The loss's Hessian in W_std is about C (x) (curvature ~ 1/V) + l2 I, with C the features' correlation
    matrix; with C = U diag(lam) U' and
    W_std = U diag(r) A, r = (lam / V + l2)^(-1/2), it is about the identity in A, so strongly correlated
    activations (the usual case) take tens of iterations, not hundreds. Same objective, same optimum: only the
    coordinates change. C costs one pass over X (N D^2); every iteration costs two (X @ W and X' @ G), done
    on X itself (standardisation is folded into W and b), so X is never copied beyond a float64 view.
    Returns W, b for the *raw* features: use `predict_proba(X, W, b)`.
    """
    X = np.asarray(X, dtype=np.float64)
    N, D = X.shape
    w = _weights(w, N)
    Yt = _targets(y, N, V)
    x_mean, x_scale, const = _moments(X, w)
    live = np.flatnonzero(~const)  # (L,) columns that vary; the others get zero weight
    L = len(live)
    lam, U = np.linalg.eigh(_correlation(X, w, x_mean, x_scale, live))  # (L,), (L, L)
    lam = np.clip(lam, 0.0, None)
    floor = 1e-10 * (lam.max() / V if L else 1.0)  # keeps r finite on exactly collinear directions when l2 = 0
    P = U / np.sqrt(lam / V + l2 + floor)  # (L, L) preconditioner: W_std[live] = P @ A

    def raw(theta):  # preconditioned (A, b_std) -> W_std (L, V), raw W (D, V), raw b (V,)
        W_std = P @ theta[:L * V].reshape(L, V)
        W = np.zeros((D, V))
        W[live] = W_std / x_scale[live, None]
        return W_std, W, theta[L * V:] - x_mean @ W

    def fun(theta):
        W_std, W, b = raw(theta)
        loss, dW, db = softmax_loss_grad(W, b, X, Yt, w)
        # forward was: z = x @ (W_std / s) + b_std - m @ (W_std / s)  ->  dW_std = (dW - m db') / s ; db_std = db
        dW_std = (dW[live] - np.outer(x_mean[live], db)) / x_scale[live, None] + l2 * W_std
        # forward was: W_std = P @ A  ->  dA = P' dW_std
        return loss + 0.5 * l2 * np.sum(W_std * W_std), np.concatenate([(P.T @ dW_std).ravel(), db])

    theta0 = np.zeros(L * V + V)
    if init is not None:  # raw W, b -> W_std = W * s, b_std = b + m W -> A = P^-1 W_std = sqrt(d) U' W_std
        W_std0 = init[0][live] * x_scale[live, None]
        theta0[:L * V] = ((U.T @ W_std0) * np.sqrt(lam / V + l2 + floor)[:, None]).ravel()
        theta0[L * V:] = init[1] + x_mean @ init[0]
    theta = _lbfgs(fun, theta0, max_iter, tol)
    _, W, b = raw(theta)
    return W, b


def choose_l2_cv(X, y, V, groups, w=None, grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), n_folds=5, seed=0, tol=1e-7,
                 score="cross_entropy"):
    # (N, D), (N, V) soft labels, int, (N,) int, (N,) -> best l2 float, cv loss (len(grid),)
    """fit_logistic's l2 with the smallest K-fold cross-validated loss, folds of whole groups (group_folds, as
    choose_ridge_cv). score "cross_entropy": the weighted held-out cross-entropy (nats); "accuracy": the held-out
    error rate of the argmax, 1 - sum_n w_n y_n[argmax p_n]. Within a fold the grid runs from the largest l2 down,
    each fit warm-started from the previous one. Ties go to the larger l2 (the smoother probe)."""
    if score not in ("cross_entropy", "accuracy"):
        raise TinyseqError(f"score must be cross_entropy or accuracy, got {score!r}")
    X, Y = np.asarray(X, dtype=np.float64), _targets(y, len(X), V)
    w = _weights(w, len(X))
    fold, k = group_folds(groups, n_folds, seed)
    order = np.argsort(grid)[::-1]                                   # largest l2 first
    loss = np.zeros(len(grid))
    for f in range(k):
        tr, te = fold != f, fold == f
        if w[tr].sum() <= 0 or w[te].sum() <= 0:
            continue
        fit = None
        for i in order:
            fit = fit_logistic(X[tr], Y[tr], V, w[tr], l2=grid[i], tol=tol, init=fit)
            logp = log_softmax(X[te] @ fit[0] + fit[1])              # (N_te, V)
            if score == "cross_entropy":
                loss[i] -= w[te] @ np.sum(Y[te] * logp, axis=1)
            else:
                loss[i] += w[te] @ (1.0 - Y[te][np.arange(len(logp)), logp.argmax(axis=1)])
    best = order[int(np.argmin(loss[order]))]                        # first minimum in order: the larger l2
    return float(grid[best]), loss


def predict_proba(X, W, b):  # (N, D), (D, V), (V,) -> (N, V)
    """softmax(X @ W + b), row by row."""
    return np.exp(log_softmax(np.asarray(X, dtype=np.float64) @ W + b))


# ----------------------------------------------------------------------------------------------------------
# 7. scoring against the exact k-step distribution P* (no sampling noise)
def expected_accuracy(pred, Pstar, w=None):  # (N,) int, (N, V), (N,) -> float
    """Weighted mean of Pstar[n, pred_n]: the probability that the predicted symbol is the one the process
    emits, averaged exactly over the process instead of over sampled futures."""
    Pstar = np.asarray(Pstar, dtype=np.float64)
    pred = np.asarray(pred).reshape(-1)
    return float(_weights(w, len(pred)) @ Pstar[np.arange(len(pred)), pred])


def bayes_expected_accuracy(Pstar, w=None):  # (N, V), (N,) -> float
    """Weighted mean of max_x Pstar[n, x]: the best expected accuracy any predictor can reach."""
    Pstar = np.asarray(Pstar, dtype=np.float64)
    return float(_weights(w, Pstar.shape[0]) @ Pstar.max(axis=1))


def constant_baseline_accuracy(Pstar, w=None):  # (N, V), (N,) -> float
    """Expected accuracy of always predicting the one symbol that is most likely on average (ignores the
    context): max_x mean_w Pstar[:, x]. The natural `baseline` for `fraction_of_gain`."""
    Pstar = np.asarray(Pstar, dtype=np.float64)
    return float((_weights(w, Pstar.shape[0]) @ Pstar).max())


def kl_bits(Pstar, Q, w=None):  # (N, V), (N, V), (N,) -> float
    """Weighted mean KL(P* || Q) in bits, with 0 log 0 = 0 and Q clipped at 1e-12 (a confident miss costs at
    most ~40 bits instead of infinity)."""
    P = np.asarray(Pstar, dtype=np.float64)
    Q = np.clip(np.asarray(Q, dtype=np.float64), 1e-12, None)
    terms = np.where(P > 0, P * (np.log2(np.where(P > 0, P, 1.0)) - np.log2(Q)), 0.0)
    return float(_weights(w, P.shape[0]) @ terms.sum(axis=1))


def fraction_of_gain(acc, baseline, bayes, if_no_gain=float("nan")):  # floats -> float
    """(acc - baseline) / (bayes - baseline): 0 = no better than the baseline, 1 = as good as Bayes.
    When Bayes gains nothing over the baseline (|bayes - baseline| < 1e-12, e.g. an unpredictable future)
    the fraction is undefined and `if_no_gain` (NaN by default) is returned."""
    gain = bayes - baseline
    return float((acc - baseline) / gain) if abs(gain) >= 1e-12 else if_no_gain


# ----------------------------------------------------------------------------------------------------------
# 8. the model's own k-step marginal, by chaining its next-token predictions
def rollout_kstep(next_token_fn, tokens, t, k, V, n_ctx, max_exact=4096, rng=None, n_samples=1024,
                  max_rows=8192):
    # fn: (B', T') int -> (B', T', V); tokens (B, T) int -> (B, V)
    """The model's k-step-ahead marginal  q(x_{t+k} | x_1..t), from its next-token output alone.

    t is the number of prefix tokens seen (tokens[:, :t]; for the activation at 0-based position p, t = p+1);
    k = 1 is the ordinary next-token prediction. The model generates its own k-1 intermediate tokens:
        q(x_{t+k} = x) = sum_{c_1..c_{k-1}} prod_i q(c_i | x_1..t, c_<i) * q(x | x_1..t, c_1..c_{k-1}).
    next_token_fn(seqs (B', L)) must return the next-token probabilities after every prefix, (B', L, V).
    Exact when V^(k-1) <= max_exact: every continuation is fed, in chunks of at most max_rows sequences.
    Otherwise Monte Carlo: n_samples continuations per prefix sampled from the model (rng: a Generator or a
    seed; None means seed 0, so results are reproducible), averaging the final distribution (not one-hot
    draws), which is unbiased with lower variance. The longest sequence fed is t + k - 1 tokens, which must
    fit the model's context n_ctx: a TinyseqError is raised otherwise.
    """
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    if not 1 <= t <= T:
        raise TinyseqError(f"t (prefix length) must be in 1..{T}, got {t}")
    if k < 1:
        raise TinyseqError(f"k must be >= 1, got {k}")
    L = t + k - 1  # longest input: the prefix plus k-1 generated tokens
    if L > n_ctx:
        raise TinyseqError(f"a {k}-step rollout after {t} tokens feeds {L} tokens, more than the model's context"
                           f" {n_ctx}; use t + k - 1 <= {n_ctx}")
    prefix = tokens[:, :t]
    out = np.zeros((B, V))
    if k == 1:
        for s in range(0, B, max_rows):
            out[s:s + max_rows] = next_token_fn(prefix[s:s + max_rows])[:, t - 1]
        return out

    n_cont = V ** (k - 1)
    if n_cont <= max_exact:
        C = np.array(list(itertools.product(range(V), repeat=k - 1)), dtype=tokens.dtype)  # (n_cont, k-1)
        for s in range(0, B * n_cont, max_rows):
            r = np.arange(s, min(s + max_rows, B * n_cont))
            bi, ci = r // n_cont, r % n_cont
            seqs = np.concatenate([prefix[bi], C[ci]], axis=1)  # (R, L)
            probs = next_token_fn(seqs)  # (R, L, V)
            # probability the model gives to the continuation: q(c_1 | prefix) ... q(c_{k-1} | ..., c_{k-2})
            steps = probs[np.arange(len(r))[:, None], t - 1 + np.arange(k - 1), C[ci]]  # (R, k-1)
            np.add.at(out, bi, steps.prod(axis=1)[:, None] * probs[:, L - 1])
        return out

    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    rows = np.repeat(np.arange(B), n_samples)  # (B * n_samples,)
    for s in range(0, len(rows), max_rows):
        r = rows[s:s + max_rows]
        seqs = prefix[r]
        for _ in range(k - 1):
            q = next_token_fn(seqs)[:, -1]  # (R, V)
            u = gen.random(len(r))[:, None]
            nxt = np.minimum((u > np.cumsum(q, axis=1)).sum(axis=1), V - 1)  # inverse-CDF draw
            seqs = np.concatenate([seqs, nxt[:, None].astype(tokens.dtype)], axis=1)
        np.add.at(out, r, next_token_fn(seqs)[:, -1])
    return out / n_samples
