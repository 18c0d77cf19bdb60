"""Tests for tinyseq.probes: the measurement math, on synthetic arrays and a tiny exact HMM defined here."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyseq import analysis as A
from tinyseq import probes
from tinyseq.errors import TinyseqError

FAST = settings(max_examples=25, deadline=None)


# ----------------------------------------------------------------------------------------------------------
# a tiny exact HMM, written here so the test does not depend on tinyseq.processes / tinyseq.beliefs
# T[x, i, j] = P(emit x, go to j | in i), shape (V, S, S)
def random_hmm(S=3, V=3, seed=0):
    rng = np.random.default_rng(seed)
    T = rng.random((V, S, S)) + 0.1
    T /= T.sum(axis=(0, 2), keepdims=True)  # for each i: sum over (x, j) is 1
    return T


def stationary(T):  # (V, S, S) -> (S,) left eigenvector of M = sum_x T[x] for eigenvalue 1
    M = T.sum(axis=0)
    vals, vecs = np.linalg.eig(M.T)
    pi = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    return pi / pi.sum()


def beliefs_after(T, tokens):  # (V, S, S), (B, L) -> (B, L, S): eta after each token
    B, L = tokens.shape
    eta = np.tile(stationary(T), (B, 1))
    out = np.empty((B, L, T.shape[1]))
    for p in range(L):
        eta = np.einsum("bi,bij->bj", eta, T[tokens[:, p]])  # eta' = eta T[x] / (eta T[x] 1)
        eta /= eta.sum(axis=1, keepdims=True)
        out[:, p] = eta
    return out


def bayes_next_token_fn(T):  # the exact Bayes predictor as a "model": (B, L) -> (B, L, V)
    def fn(tokens):
        eta = beliefs_after(T, np.asarray(tokens))  # (B, L, S)
        return np.einsum("bli,xij->blx", eta, T)  # P(x | prefix) = eta T[x] 1
    return fn


def exact_kstep(T, eta, k):  # (V, S, S), (B, S), k -> (B, V): eta M^(k-1) T[x] 1
    M = T.sum(axis=0)
    return np.einsum("bi,ij,xjk->bx", eta, np.linalg.matrix_power(M, k - 1), T)


def sample_hmm(T, n_seq, L, seed=0):  # -> tokens (n_seq, L)
    rng = np.random.default_rng(seed)
    V, S, _ = T.shape
    flat = T.transpose(1, 0, 2).reshape(S, V * S)  # (S, V*S): row i = P(x, j | i)
    state = rng.choice(S, size=n_seq, p=stationary(T))
    toks = np.empty((n_seq, L), dtype=np.int64)
    for p in range(L):
        cum = np.cumsum(flat[state], axis=1)
        xj = np.minimum((rng.random(n_seq)[:, None] > cum).sum(axis=1), V * S - 1)
        toks[:, p], state = xj // S, xj % S
    return toks


def dirichlet_beliefs(n_seq, T, S, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(S), size=(n_seq, T))  # (n_seq, T, S)


# ----------------------------------------------------------------------------------------------------------
# affine probe and metrics
def belief_probe(acts, Y, ridge=0.0, shuffle=False):  # (NSEQ, T, D), (NSEQ, T, S) -> the product's table row
    """analysis.belief_probe, the function behind every row of the belief table, on synthetic arrays. Each
    sequence starts with its own token, so no two sequences share a prefix (rows are not merged)."""
    n_seq, T, _ = acts.shape
    tokens = np.zeros((n_seq, T), dtype=np.int64)
    tokens[:, 0] = np.arange(n_seq)
    data = A.EvalData("sampled", n_seq, tokens, np.ones(n_seq), Y, None, {"h": acts}, ["h"], {}, 0.2, 0)
    row, _ = A.belief_probe(data, A.acts_features(data, data.acts, "h"), "h", ridge, shuffle=shuffle)
    return row


def test_features_that_are_an_affine_image_of_the_belief_give_r2_one():
    Y = dirichlet_beliefs(200, 6, 4, seed=1)
    rng = np.random.default_rng(2)
    M = rng.standard_normal((4, 4))  # invertible (a.s.): features = beliefs @ M + c
    for acts in (Y, Y @ M + 3.0, np.concatenate([Y @ rng.standard_normal((4, 16)), np.ones((200, 6, 2))], -1)):
        row = belief_probe(acts, Y)
        assert abs(row["r2"] - 1.0) < 1e-9
        assert row["mse"] < 1e-18
        assert row["n_fit_rows"] == 40 * 6 and row["n_eval_rows"] == 160 * 6


def test_rank_deficient_one_hot_features():
    # one-hot of a token that determines the belief: rank-deficient after centring, still an exact fit
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 5, size=(300, 4))
    table = rng.dirichlet(np.ones(3), size=5)  # belief for each token
    acts = np.eye(5)[tok]  # (300, 4, 5) rows sum to 1: collinear with the intercept
    row = belief_probe(acts, table[tok])
    assert abs(row["r2"] - 1.0) < 1e-9


def test_noise_features_give_r2_about_zero():
    Y = dirichlet_beliefs(500, 10, 3, seed=3)
    acts = np.random.default_rng(4).standard_normal((500, 10, 5))
    row = belief_probe(acts, Y)
    assert -0.05 <= row["r2"] <= 0.05


def test_shuffled_label_control_is_about_zero():
    # the held-out R^2 of a shuffled fit is about -2 beta, with beta the noise coefficient of shuffled Y on Y,
    # sd 1/sqrt(n_fit rows): 10,000 fit rows keep it within +-0.05
    Y = dirichlet_beliefs(5000, 10, 3, seed=5)
    acts = Y @ np.random.default_rng(6).standard_normal((3, 8))
    assert belief_probe(acts, Y)["r2"] > 1 - 1e-9
    assert abs(belief_probe(acts, Y, shuffle=True)["r2"]) <= 0.05


def test_ridge_cv_picks_positive_ridge_when_d_large_vs_n():
    rng = np.random.default_rng(7)
    n_seq, T, D, S = 100, 5, 80, 3
    acts = rng.standard_normal((n_seq, T, D))
    Y = acts @ (0.1 * rng.standard_normal((D, S))) + 2.0 * rng.standard_normal((n_seq, T, S))
    row = belief_probe(acts, Y, ridge="auto")       # 100 fit rows for 80 dimensions: "auto" means CV
    assert row["ridge"] > 0
    assert "CV" in row["ridge_choice"]
    # and the chosen ridge generalises better than no ridge
    assert row["mse"] < belief_probe(acts, Y, ridge=0.0)["mse"]


def test_ridge_cv_picks_zero_when_the_fit_is_exact():
    Y = dirichlet_beliefs(100, 5, 3, seed=8)
    acts = Y @ np.random.default_rng(9).standard_normal((3, 6))
    row = belief_probe(acts, Y, ridge="cv")
    assert row["ridge"] == 0.0 and "CV" in row["ridge_choice"]


@FAST
@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([0.0, 0.3]))
def test_weighted_fit_equals_fit_on_duplicated_rows(seed, D, ridge):
    rng = np.random.default_rng(seed)
    N = 30
    X = rng.standard_normal((N, D))
    Y = rng.standard_normal((N, 2))
    counts = rng.integers(1, 4, size=N)
    W1, b1 = probes.fit_affine(X, Y, w=counts, ridge=ridge)
    W2, b2 = probes.fit_affine(np.repeat(X, counts, axis=0), np.repeat(Y, counts, axis=0), ridge=ridge)
    np.testing.assert_allclose(W1, W2, atol=1e-9)
    np.testing.assert_allclose(b1, b2, atol=1e-9)


def test_ridge_does_not_penalise_the_intercept():
    # a huge ridge shrinks W to 0 and leaves b = the weighted mean of Y
    rng = np.random.default_rng(10)
    X, Y, w = rng.standard_normal((50, 3)), rng.standard_normal((50, 2)) + 5.0, rng.random(50)
    W, b = probes.fit_affine(X, Y, w, ridge=1e12)
    assert np.abs(W).max() < 1e-9
    np.testing.assert_allclose(b, (w / w.sum()) @ Y, atol=1e-9)


@FAST
@given(st.integers(0, 10_000))
def test_metric_identities(seed):
    rng = np.random.default_rng(seed)
    Y, Yhat, w = rng.random((20, 3)), rng.random((20, 3)), rng.random(20) + 0.01
    assert probes.r2_score(Y, Y, w) == 1.0
    m = probes.mse(Y, Yhat, w)
    assert np.isclose(m, probes.mse_by_coordinate(Y, Yhat, w).mean())
    assert np.isclose(probes.rmse(Y, Yhat, w) ** 2, m)
    wn = w / w.sum()
    sst = wn @ ((Y - wn @ Y) ** 2).sum(1)
    assert np.isclose(probes.r2_score(Y, Yhat, w), 1 - 3 * m / sst)
    assert probes.r2_score(Y, np.tile(wn @ Y, (20, 1)), w) == pytest.approx(0.0, abs=1e-12)


def test_split_is_by_sequence_seeded_and_disjoint():
    f1, e1 = probes.split_sequences(50, 0.2, seed=3)
    f2, e2 = probes.split_sequences(50, 0.2, seed=3)
    assert len(f1) == 10 and len(e1) == 40
    assert np.array_equal(f1, f2) and np.array_equal(e1, e2)
    assert not set(f1) & set(e1) and set(f1) | set(e1) == set(range(50))
    with pytest.raises(TinyseqError):
        probes.split_sequences(1, 0.2)


# ----------------------------------------------------------------------------------------------------------
# pairwise distances
def test_pairwise_distance_r2():
    rng = np.random.default_rng(11)
    Y = rng.dirichlet(np.ones(4), size=300)
    Q = Y[:, :2] / Y[:, :2].sum(1, keepdims=True)  # a lossy "next-token" image of the belief
    out = probes.pairwise_distance_r2(Y, Y, Q, n_pairs=5000)
    assert out["r2_true"] == pytest.approx(1.0, abs=1e-12)
    assert out["r2_next"] < 0.9
    assert out["n_pairs"] == 5000
    # a probe that outputs the next-token distribution itself tracks Q, not Y
    assert probes.pairwise_distance_r2(Q, Y, Q, n_pairs=5000)["r2_next"] == pytest.approx(1.0, abs=1e-12)
    assert probes.pairwise_distance_r2(Y, Y, Q, 5000, w=rng.random(300))["r2_true"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------
# logistic regression
@pytest.mark.parametrize("soft", [False, True])
def test_softmax_loss_gradient_matches_finite_differences(soft):
    rng = np.random.default_rng(12)
    N, D, V = 7, 4, 3
    X, W, b, w = rng.standard_normal((N, D)), rng.standard_normal((D, V)), rng.standard_normal(V), rng.random(N)
    y = rng.dirichlet(np.ones(V), size=N) if soft else rng.integers(0, V, size=N)
    _, dW, db = probes.softmax_loss_grad(W, b, X, y, w, l2=0.3)
    eps = 1e-5
    for P, dP in ((W, dW), (b, db)):
        num = np.empty_like(P)
        for idx in np.ndindex(P.shape):
            old = P[idx]
            P[idx] = old + eps
            fp = probes.softmax_loss_grad(W, b, X, y, w, l2=0.3)[0]
            P[idx] = old - eps
            fm = probes.softmax_loss_grad(W, b, X, y, w, l2=0.3)[0]
            P[idx] = old
            num[idx] = (fp - fm) / (2 * eps)
        rel = np.abs(num - dP) / np.maximum(np.maximum(np.abs(num), np.abs(dP)), 1e-8)
        assert rel.max() < 1e-6


def test_logistic_recovers_a_known_softmax_model():
    rng = np.random.default_rng(13)
    N, D, V = 20000, 4, 3
    X = rng.standard_normal((N, D)) * [1.0, 10.0, 0.1, 1.0] + [0.0, 5.0, -2.0, 0.0]  # badly scaled on purpose
    W_true = rng.standard_normal((D, V)) / np.array([1.0, 10.0, 0.1, 1.0])[:, None]
    b_true = rng.standard_normal(V)
    P = probes.predict_proba(X, W_true, b_true)
    y = np.minimum((rng.random(N)[:, None] > P.cumsum(1)).sum(1), V - 1)
    W, b = probes.fit_logistic(X, y, V, l2=1e-6)
    assert np.abs(probes.predict_proba(X, W, b) - P).max() < 0.05
    assert np.abs(probes.predict_proba(X, W, b) - P).mean() < 0.01


def test_logistic_reaches_the_optimum_with_weights_and_a_constant_column():
    rng = np.random.default_rng(14)
    N, D, V = 500, 5, 4
    X = np.concatenate([rng.standard_normal((N, D)), np.full((N, 1), 2.0)], axis=1)
    y, w = rng.integers(0, V, size=N), rng.random(N)
    W, b = probes.fit_logistic(X, y, V, w=w, l2=0.0, max_iter=2000, tol=1e-10)
    _, dW, db = probes.softmax_loss_grad(W, b, X, y, w)
    assert np.abs(dW).max() < 1e-7 and np.abs(db).max() < 1e-7
    assert np.all(W[-1] == 0)  # the constant column carries nothing


# ----------------------------------------------------------------------------------------------------------
# scoring against the exact k-step distribution
@FAST
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_bayes_argmax_reaches_bayes_accuracy(seed, V):
    rng = np.random.default_rng(seed)
    Pstar, w = rng.dirichlet(np.ones(V), size=40), rng.random(40)
    bayes = probes.bayes_expected_accuracy(Pstar, w)
    assert probes.expected_accuracy(Pstar.argmax(1), Pstar, w) == pytest.approx(bayes, abs=1e-15)
    other = probes.expected_accuracy(rng.integers(0, V, 40), Pstar, w)
    base = probes.constant_baseline_accuracy(Pstar, w)
    assert other <= bayes + 1e-15 and base <= bayes + 1e-15
    assert probes.fraction_of_gain(bayes, base, bayes) == pytest.approx(1.0) or bayes - base < 1e-12
    assert probes.kl_bits(Pstar, Pstar, w) == pytest.approx(0.0, abs=1e-12)
    assert probes.kl_bits(Pstar, np.full_like(Pstar, 1 / V), w) > 0


def test_kl_bits_and_fraction_of_gain_values():
    P = np.array([[1.0, 0.0], [0.5, 0.5]])
    Q = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert probes.kl_bits(P, Q) == pytest.approx(0.5)  # (1 bit + 0) / 2
    assert probes.kl_bits(P, np.array([[0.0, 1.0], [0.5, 0.5]])) == pytest.approx(0.5 * np.log2(1e12))
    assert probes.fraction_of_gain(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert np.isnan(probes.fraction_of_gain(0.5, 0.5, 0.5))
    assert probes.fraction_of_gain(0.5, 0.5, 0.5, if_no_gain=1.0) == 1.0


# ----------------------------------------------------------------------------------------------------------
# rollout: the Bayes predictor chained k-1 times gives the exact k-step marginal
@pytest.mark.parametrize("k", [1, 2, 4])
def test_rollout_of_the_bayes_predictor_is_the_exact_kstep_marginal(k):
    T = random_hmm(3, 3, seed=17)
    toks = sample_hmm(T, 6, 5, seed=18)
    fn = bayes_next_token_fn(T)
    for t in (1, 3, 5):
        got = probes.rollout_kstep(fn, toks, t, k, V=3, n_ctx=10, max_rows=50)  # small chunks on purpose
        want = exact_kstep(T, beliefs_after(T, toks[:, :t])[:, -1], k)
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)


def test_rollout_monte_carlo_is_close_and_seeded():
    T = random_hmm(3, 3, seed=19)
    toks = sample_hmm(T, 4, 3, seed=20)
    fn = bayes_next_token_fn(T)
    want = exact_kstep(T, beliefs_after(T, toks)[:, -1], 4)
    got = probes.rollout_kstep(fn, toks, 3, 4, V=3, n_ctx=8, max_exact=1, n_samples=4000, rng=1)
    assert np.abs(got - want).max() < 0.03
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    again = probes.rollout_kstep(fn, toks, 3, 4, V=3, n_ctx=8, max_exact=1, n_samples=4000, rng=1)
    assert np.array_equal(got, again)


def test_rollout_refuses_to_exceed_the_context():
    T = random_hmm(2, 2)
    toks = sample_hmm(T, 2, 6)
    with pytest.raises(TinyseqError, match="context"):
        probes.rollout_kstep(bayes_next_token_fn(T), toks, 5, 3, V=2, n_ctx=6)  # needs 5 + 3 - 1 = 7 tokens
    probes.rollout_kstep(bayes_next_token_fn(T), toks, 4, 3, V=2, n_ctx=6)  # 6 tokens: fine


def test_group_folds_keep_each_group_on_one_side():
    groups = np.repeat(np.arange(23), 4)[np.random.default_rng(0).permutation(92)]
    fold, k = probes.group_folds(groups, 5, seed=3)
    assert k == 5
    for g in range(23):
        assert len(set(fold[groups == g])) == 1
    assert sorted(np.bincount(fold, minlength=5) // 4) == [4, 4, 5, 5, 5]     # 23 groups: balanced folds


def test_logistic_warm_start_reaches_the_same_optimum():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = rng.integers(0, 3, 300)
    W0, b0 = probes.fit_logistic(X, y, 3, l2=1.0, tol=1e-10)
    W1, b1 = probes.fit_logistic(X, y, 3, l2=1e-2, tol=1e-10)
    W2, b2 = probes.fit_logistic(X, y, 3, l2=1e-2, tol=1e-10, init=(W0, b0))
    np.testing.assert_allclose(probes.predict_proba(X, W2, b2), probes.predict_proba(X, W1, b1), atol=1e-7)
    assert not np.allclose(W0, W1, atol=1e-3)                                      # a genuinely different start


def test_l2_cv_picks_the_weakest_l2_for_a_sharp_model_and_the_strongest_for_noise():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 3))
    groups = np.arange(2000) // 10
    sharp = np.eye(3)[np.argmax(X @ (8.0 * rng.standard_normal((3, 3))), axis=1)]  # labels a sharp function of X
    l2, ce = probes.choose_l2_cv(X, sharp, 3, groups)
    assert l2 == 1e-4 and ce.shape == (5,)
    Xn = rng.standard_normal((60, 3))                                                # labels independent of X
    noise = np.eye(3)[rng.integers(0, 3, 60)]
    assert probes.choose_l2_cv(Xn, noise, 3, np.arange(60) // 3)[0] == 1.0


def test_l2_cv_accuracy_scores_are_the_held_out_error_rates():
    """Recomputed independently: per fold, each l2 fitted from zero (no warm start), error rate of the argmax."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((400, 3))
    Y = probes.predict_proba(X, rng.standard_normal((3, 3)), np.zeros(3))           # soft labels
    w, groups, grid = rng.random(400), np.arange(400) // 8, (1e-3, 1e-1, 10.0)
    l2, err = probes.choose_l2_cv(X, Y, 3, groups, w, grid=grid, tol=1e-10, score="accuracy")
    fold, k = probes.group_folds(groups)
    wn = w / w.sum()
    for i, g in enumerate(grid):
        want = 0.0
        for f in range(k):
            W, b = probes.fit_logistic(X[fold != f], Y[fold != f], 3, w[fold != f], l2=g, tol=1e-10)
            hit = Y[fold == f][np.arange((fold == f).sum()), (X[fold == f] @ W + b).argmax(axis=1)]
            want += wn[fold == f] @ (1.0 - hit)
        assert err[i] == pytest.approx(want, abs=1e-9)
    assert l2 == max(g for g, e in zip(grid, err) if e == err.min())
