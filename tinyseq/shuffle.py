"""The shuffle control: does a layer hold more of the belief than the next-token distribution shows?

When the next-token map b -> b @ E (E the (S, V) emission matrix) has rank below S (rrxor, z1r, nond), a
belief splits into a part the next token sees and a part it cannot:

    b = seen + unseen,   unseen = b @ N @ N.T   (N: orthonormal basis of the null space of E^T,
                                               beliefs.unseen_basis),

and `seen` is a function of the next-token distribution q = b @ E. A network could reach a high belief R^2
partly from next-token information alone. The control keeps every row's `seen` part, gives it the `unseen`
part of another row, refits the same probe and scores it again. If the layer holds the unseen part, R^2 drops.

Why within groups. Rows are permuted only among rows that share q (and their weight). Plain permutation
across all rows would also destroy the part of `unseen` that q predicts (unseen and q are correlated), so even
activations that are nothing but q would lose R^2 (tests/test_shuffle.py shows it on rrxor). Within a group
`seen` is one vector, so permuting the whole target is permuting `unseen`, and the conditional distribution of
`unseen` given q is kept. Then for activations that are any function of q the permuted data set is the real one
with rows of equal features and equal weight relabelled: the probe, its predictions and its R^2 are exactly
the real ones (no drop, p = 1). Where q never repeats with different unseen parts there is nothing to permute.

Plain arrays in, numbers out (rows are (sequence, position) pairs merged by prefix as in tinyseq.analysis.Rows:
features per prefix, targets per row). Shape letters: R rows, U prefixes, D features, S states, K = S - rank
of E (the unseen part's dimensions), n permutations in a batch.

Cost. The probe is linear in its targets, so each probe's fit is solved once (probes.affine_fit_operator) and a
refit is a matrix product; a batch of permutations is one product. Targets enter only through per-prefix sums,
and the seen part's sums never change, so a permutation costs a shuffle of the rows and K bincounts.
"""
from __future__ import annotations

import numpy as np

from tinyseq import probes

TIE_TOL = 1e-8         # a permuted R^2 within this of the real one counts as a tie (>= real) in the p-value: a
#                        refit that should not move can move by ~1e-10 (float32 features, nearly collinear columns)
Q_DECIMALS = 9         # next-token distributions equal to 9 decimals share a group (float noise is ~1e-15)
BATCH_CELLS = 2_000_000  # permutations per batch: at most this many (prefix x coordinate) cells per batch array


class Side:
    """One side of the split (fit or held-out) as the shuffle needs it: rows merged by prefix, each row's target
    split into its seen part (kept) and the coordinates of its unseen part (moved)."""

    def __init__(self, inv, n_prefixes, w, beliefs, emission, null):
        # inv (R,) row -> prefix, w (R,) row weights, beliefs (R, S), emission (S, V), null (S, K) = unseen_basis
        self.inv, self.n_prefixes, self.w, self.null = inv, n_prefixes, w, null
        coords = beliefs @ null                                          # (R, K) the unseen part, in the basis
        seen = beliefs - coords @ null.T                                 # (R, S)
        self.coords_t = np.ascontiguousarray(coords.T)                   # (K, R): np.take of rows is fast this way
        self.unseen_sq = (coords * coords).sum(axis=1)                   # (R,) ||unseen||^2 (orthonormal basis)
        self.groups = next_token_groups(beliefs @ emission, w)           # (R,)
        self.wu = np.bincount(inv, weights=w, minlength=n_prefixes)      # (U,) each prefix's weight
        self.seen_sums = self._sums(seen.T)                              # (U, S)
        self.seen_sq = float(w @ (seen * seen).sum(axis=1))
        order = np.argsort(self.groups, kind="stable")                   # rows listed group by group
        cuts = np.flatnonzero(np.diff(self.groups[order])) + 1
        self._swappable = [g for g in np.split(order, cuts) if len(g) > 1]   # rows of each group of 2 or more

    def _sums(self, Y_t):  # (C, R) -> (U, C) weighted sum over each prefix's rows
        return np.stack([np.bincount(self.inv, weights=self.w * y, minlength=self.n_prefixes) for y in Y_t], axis=1)

    def permutation(self, rng):  # -> src (R,): row i takes row src[i]'s unseen part, src[i] in i's group
        """A uniformly random permutation of the rows that never leaves a group."""
        src = np.arange(len(self.inv))
        for g in self._swappable:
            src[g] = rng.permutation(g)
        return src

    def sums(self, src):  # -> T (U, S), C: each prefix's weighted target sum and sum_i w_i ||y_i||^2
        """What a fit or an R^2 needs of the targets y_i = seen_i + unseen_src[i]. seen is orthogonal to unseen, so
        ||y_i||^2 = ||seen_i||^2 + ||unseen_src[i]||^2."""
        T = self.seen_sums + self._sums(np.take(self.coords_t, src, axis=1)) @ self.null.T
        return T, self.seen_sq + float(self.w @ self.unseen_sq[src])


def next_token_groups(Q, w):  # (R, V), (R,) -> (R,) group id
    """Rows that share their next-token distribution and their weight: the rows a permutation may swap."""
    key = np.concatenate([np.round(Q, Q_DECIMALS), np.round(w / w.max(), 12)[:, None]], axis=1)
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)


def movable_share(side: Side) -> float:
    """Weighted share of rows whose group holds more than one distinct unseen part (what the shuffle can move)."""
    pairs = np.unique(np.column_stack([side.groups, np.round(side.coords_t.T, Q_DECIMALS)]), axis=0)
    distinct = np.bincount(pairs[:, 0].astype(np.int64), minlength=side.groups.max() + 1)   # (G,)
    return float(side.w @ (distinct[side.groups] > 1) / side.w.sum())


def ceiling(side: Side) -> float:
    """1 - (weighted within-group variance) / (weighted total variance) of the targets: the highest R^2 any
    predictor fixed before the shuffle can expect on shuffled rows. For a row of group g the shuffled target is
    a uniform draw from g's targets, so E||target - f||^2 = ||mean_g - f||^2 + var_g >= var_g. Within a group
    only the unseen part varies, so the within-group variance is the unseen coordinates'."""
    w, g, Z = side.w / side.w.sum(), side.groups, side.coords_t.T        # (R,), (R,), (R, K)
    wg = np.bincount(g, weights=w)                                       # (G,)
    mean_g = np.stack([np.bincount(g, weights=w * z) for z in side.coords_t], axis=1) / wg[:, None]   # (G, K)
    within = w @ ((Z - mean_g[g]) ** 2).sum(axis=1)
    T, C = side.sums(np.arange(len(g)))
    mean = T.sum(axis=0) / side.w.sum()                                  # (S,)
    return float(1.0 - within / (C / side.w.sum() - mean @ mean))


def refit_r2(A, x_mean, X_held, fit: Side, held: Side, T_fit, T_held, C_held):
    # A (D, U_f), x_mean (D,), X_held (U_h, D), T_fit (n, U_f, S), T_held (n, U_h, S), C_held (n,) -> R^2 (n,)
    """Held-out R^2 of the affine probe refitted to n sets of fit targets, from prefix sums only.
    A, x_mean: probes.affine_fit_operator of the fit prefixes' features with their weights and ridge. A row's
    error against its prefix's output yhat_u, summed: SSE = C - 2 sum_u yhat_u . T_u + sum_u wu_u ||yhat_u||^2."""
    n, U, S = T_fit.shape
    y_mean = T_fit.sum(axis=1) / fit.wu.sum()                            # (n, S)
    Yc = T_fit / fit.wu[:, None] - y_mean[:, None]                       # (n, U_f, S) centred prefix means
    W = A @ Yc.transpose(1, 0, 2).reshape(U, n * S)                      # (D, n*S): one product for the batch
    yhat = X_held @ W + (y_mean.reshape(-1) - x_mean @ W)                # (U_h, n*S)
    yhat = yhat.reshape(-1, n, S).transpose(1, 0, 2)                     # (n, U_h, S)
    sse = C_held - 2.0 * (yhat * T_held).sum(axis=(1, 2)) + (yhat * yhat).sum(axis=2) @ held.wu
    mean = T_held.sum(axis=1) / held.wu.sum()                            # (n, S)
    sst = C_held - held.wu.sum() * (mean * mean).sum(axis=1)
    return 1.0 - sse / sst


def permutation_test(fit: Side, held: Side, features, n_permutations, rng) -> list[dict]:
    """features: [(X_fit (U_f, D), X_held (U_h, D), ridge), ...], one per probe. For each probe: the real held-out
    R^2 and its R^2 after each of n_permutations within-group shuffles (fit and held-out rows each shuffled
    among themselves; every probe sees the same shuffles), with p = (1 + #{shuffled >= real}) / (1 + n)."""
    ops = [probes.affine_fit_operator(Xf, fit.wu, ridge) + (Xh,) for Xf, Xh, ridge in features]
    batch = max(1, BATCH_CELLS // (max(fit.n_prefixes, held.n_prefixes) * fit.seen_sums.shape[1]))
    real = _r2_batch(ops, fit, held, [(np.arange(len(fit.inv)), np.arange(len(held.inv)))])[:, 0]   # (P,)
    shuffled = np.concatenate([
        _r2_batch(ops, fit, held, [(fit.permutation(rng), held.permutation(rng))
                                   for _ in range(min(batch, n_permutations - start))])
        for start in range(0, n_permutations, batch)], axis=1)                           # (P, n_permutations)
    return [{"r2": float(r), "shuffled_mean": float(s.mean()), "shuffled_sd": float(s.std()),
             "shuffled_min": float(s.min()), "shuffled_max": float(s.max()), "drop": float(r - s.mean()),
             "p_value": (1 + int((s >= r - TIE_TOL).sum())) / (1 + n_permutations), "shuffled": s.tolist()}
            for r, s in zip(real, shuffled)]


def _r2_batch(ops, fit, held, srcs):  # [(src_fit, src_held)] * n -> (P, n) R^2 of every probe on every shuffle
    T_fit = np.stack([fit.sums(sf)[0] for sf, _ in srcs])                # (n, U_f, S)
    held_sums = [held.sums(sh) for _, sh in srcs]
    T_held, C_held = np.stack([t for t, _ in held_sums]), np.array([c for _, c in held_sums])
    return np.stack([refit_r2(A, m, Xh, fit, held, T_fit, T_held, C_held) for A, m, Xh in ops])
