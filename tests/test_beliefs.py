"""Exact belief machinery against ANCHORS.md values and against identities that must hold for any HMM."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyseq
from tinyseq import beliefs as B
from tinyseq.processes import make_process

from test_processes import random_hmm


# ---------------------------------------------------------------------------------------------------------
# published values (ANCHORS.md), to the 4 decimals given there
H_MESS3 = [1.0986, 0.8577, 0.8134, 0.7981, 0.7947, 0.7938, 0.7935]
H_RRXOR = [0.6931, 0.6931, 0.6365, 0.6285, 0.5987, 0.5776, 0.5615, 0.5398, 0.5269, 0.5158, 0.5033]
H_Z1R = [0.6931, 0.6365, 0.4621, 0.2310, 0.2310, 0.2310]


@pytest.mark.parametrize("name,expected", [("mess3", H_MESS3), ("rrxor", H_RRXOR), ("z1r", H_Z1R)])
def test_myopic_entropies_match_anchors(name, expected):
    h = B.myopic_entropies(tinyseq.process(name), len(expected))
    np.testing.assert_allclose(h, expected, atol=5.1e-5)


def test_mess3_context10_floor():
    # a context-10 model predicts positions 2..11: best mean loss = mean h(2..11) = 0.80251
    h = B.myopic_entropies(tinyseq.process("mess3"), 11)
    assert h[1:11].mean() == pytest.approx(0.80251, abs=5e-6)


def test_entropy_rates():
    assert B.entropy_rate(tinyseq.process("rrxor"))[0] == pytest.approx(2 / 3 * math.log(2), abs=1e-12)
    assert B.entropy_rate(tinyseq.process("z1r"))[0] == pytest.approx(math.log(2) / 3, abs=1e-12)
    for name in ("golden_mean", "even"):
        rate, exact = B.entropy_rate(tinyseq.process(name))
        assert exact and rate / math.log(2) == pytest.approx(2 / 3, abs=1e-12)
    rate, exact = B.entropy_rate(tinyseq.process("mess3"))
    assert not exact and rate == pytest.approx(0.7935, abs=5e-5)
    # golden mean reaches its rate at L = 2; even only slowly
    h = B.myopic_entropies(tinyseq.process("golden_mean"), 5)
    assert h[1] == pytest.approx(2 / 3 * math.log(2), abs=1e-12)
    assert B.myopic_entropies(tinyseq.process("even"), 10)[-1] > 2 / 3 * math.log(2) + 1e-3


@pytest.mark.parametrize("name,count,by", [("rrxor", 36, 6), ("z1r", 7, None), ("even", 4, None),
                                           ("golden_mean", 3, None)])
def test_msp_sizes(name, count, by):
    p = tinyseq.process(name)
    assert B.msp(p, 10).n_distinct == count
    if by is not None:
        assert B.msp(p, by).n_distinct == count and B.msp(p, by - 1).n_distinct < count


def test_mess3_msp_count_and_nond_infinite():
    assert B.msp(tinyseq.process("mess3"), 10).n_distinct == 83_500
    p = tinyseq.process("nond")
    levels = B.msp(p, 8).levels
    assert [len(lvl.beliefs) for lvl in levels] == list(range(1, 10))  # one more belief at each depth
    assert B.statistical_complexity(p) is None


def test_statistical_complexity_values():
    # rrxor: causal states S,0,1,T,F with stationary [2,1,1,1,1]/6 -> 2.2516 bits; z1r: log 3; even: H(2/3,1/3)
    w = np.array([2, 1, 1, 1, 1]) / 6
    assert B.statistical_complexity(tinyseq.process("rrxor")) == pytest.approx(-(w * np.log(w)).sum(), abs=1e-10)
    assert B.statistical_complexity(tinyseq.process("z1r")) == pytest.approx(math.log(3), abs=1e-10)
    q = np.array([2 / 3, 1 / 3])
    assert B.statistical_complexity(tinyseq.process("even")) == pytest.approx(-(q * np.log(q)).sum(), abs=1e-10)


@pytest.mark.parametrize("name,ranks", [("mess3", (3, 3, 3, 3)), ("z1r", (2, 3, 3, 3)), ("rrxor", (2, 2, 4, 5))])
def test_observability_ranks_match_anchors(name, ranks):
    r = B.observability_ranks(tinyseq.process(name))
    assert (r["next_token"], r["kstep_marginals"], r["joint_futures"], r["states"]) == ranks


def test_rrxor_full_joint_rank_is_5_with_longer_futures():
    assert B.observability_ranks(tinyseq.process("rrxor"), 5)["joint_futures"] == 5


# ---------------------------------------------------------------------------------------------------------
# identities on random HMMs
def brute_force_block_entropy(p, L):
    """H(L) by summing over every word of length L with an independent product of matrices."""
    H = 0.0
    for w in itertools.product(range(p.vocab), repeat=L):
        v = p.stationary.copy()
        for x in w:
            v = v @ p.T[x]
        q = v.sum()
        if q > 0:
            H -= q * math.log(q)
    return H


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000), sparse=st.booleans())
def test_random_hmm_identities(seed, sparse):
    p = random_hmm(seed, sparsity=0.4 if sparse else 0.0)
    rng = np.random.default_rng(seed)
    toks = p.sample(16, 7, rng)
    eta = B.belief_states(p, toks)                               # (16, 7, S)
    np.testing.assert_allclose(eta.sum(-1), 1.0, atol=1e-12)
    assert (eta >= 0).all()
    nxt = B.next_token_probs(p, eta)
    np.testing.assert_allclose(nxt.sum(-1), 1.0, atol=1e-12)
    # chain rule, the seed's f(a, b, c) == g(a)(b)(c): joint of the next two tokens equals
    # P(x1 | eta) * P(x2 | eta updated on x1)
    joint = B.joint_future(p, eta[:, -1], 2)                     # (16, V, V)
    for x1 in range(p.vocab):
        p1 = B.next_token_probs(p, eta[:, -1])[:, x1]
        ok = p1 > 0
        chained = p1[ok, None] * B.next_token_probs(p, B.update(p, eta[ok, -1], x1))
        np.testing.assert_allclose(joint[ok, x1], chained, atol=1e-12)
    # the k-step marginal is the joint's marginal, for k = 1..3
    j3 = B.joint_future(p, eta[:, -1], 3)
    np.testing.assert_allclose(B.kstep_marginal(p, eta[:, -1], 3), j3.sum(axis=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(B.kstep_marginal(p, eta[:, -1], 2), j3.sum(axis=(1, 3)), atol=1e-12)
    # h(L) non-increasing, and H(L) equals brute force over all words
    h = B.myopic_entropies(p, 6)
    # once h(L) has converged its steps are rounding: H(L) sums V^L terms of up to L nats each, so a step of
    # +3.6e-12 turned up (seed 165); a real increase would be of the size of the early steps (1e-4 .. 1e-6)
    assert np.all(np.diff(h) <= 1e-10)
    for L in (1, 3, 5):
        assert h[:L].sum() == pytest.approx(brute_force_block_entropy(p, L), abs=1e-10)
    # the belief after a prefix is the normalised forward vector
    v = p.stationary.copy()
    for x in toks[0]:
        v = v @ p.T[x]
    np.testing.assert_allclose(eta[0, -1], v / v.sum(), atol=1e-12)
    assert B.sequence_probs(p, toks[:1])[0] == pytest.approx(v.sum(), rel=1e-12)


def test_enumerate_sequences_sum_to_one_and_match_counts():
    p = tinyseq.process("rrxor")
    toks, probs = B.enumerate_sequences(p, 10)
    assert len(toks) == 436   # ANCHORS/issue: rrxor has 436 length-10 sequences
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(probs, B.sequence_probs(p, toks), rtol=1e-12)


def test_kstep_accuracy_against_enumeration():
    """E[max_x P*] over all contexts of length 4, by brute force, equals the MSP computation."""
    for name in ("mess3", "z1r", "rrxor"):
        p = tinyseq.process(name)
        toks, probs = B.enumerate_sequences(p, 4)
        eta = B.belief_states(p, toks)[:, -1]
        for k in (1, 2, 3):
            brute = float(probs @ B.kstep_marginal(p, eta, k).max(axis=1))
            assert B.kstep_bayes_accuracy(p, 4, 3)[k - 1] == pytest.approx(brute, abs=1e-12)
        base = (p.stationary @ p.emission).max()
        assert B.kstep_marginal_accuracy(p, 2)[1] == pytest.approx(base)


def test_impossible_sequence_is_a_clear_error():
    p = tinyseq.process("golden_mean")
    with pytest.raises(tinyseq.TinyseqError, match="impossible"):
        B.belief_states(p, np.array([[1, 1]]))


def test_process_facts_json_keys():
    f = B.process_facts(tinyseq.process("z1r"), depth=6, horizon=3, context=4)
    for key in ("name", "states", "vocab", "stationary", "myopic_entropy_nats", "entropy_rate_nats",
                "msp_states", "kstep_bayes_accuracy", "kstep_marginal_accuracy", "ranks"):
        assert key in f
    assert len(f["myopic_entropy_nats"]) == 6 and len(f["kstep_bayes_accuracy"]) == 3


# ---- process_facts when the MSP is too big for the default depth --------------------------------------
def _never_merging_4_symbol():
    """4 states, 4 symbols, every entry positive and generic: no two beliefs merge, so level d holds 4^d."""
    return random_hmm(3, V=4, S=4)


def test_default_depth_comes_down_to_the_deepest_msp_level_that_fits(monkeypatch):
    monkeypatch.setattr(B, "MAX_LEVEL_NODES", 1000)        # level 5 would hold 4^5 = 1,024
    proc = _never_merging_4_symbol()
    f = B.process_facts(proc, horizon=2)
    assert f["depth"] == 4 and f["context"] == 4 and len(f["myopic_entropy_nats"]) == 4
    assert "depth 4 and context 4, not 10" in f["depth_note"] and "1,024" in f["depth_note"]
    same = B.process_facts(proc, depth=4, horizon=2, context=4)       # the facts are those of depth 4
    assert same["depth_note"] is None
    assert {k: v for k, v in f.items() if k != "depth_note"} == {k: v for k, v in same.items() if k != "depth_note"}
    assert same["msp_states"] == sum(4 ** d for d in range(5))         # nothing merged: 1 + 4 + ... + 256
    f = B.process_facts(proc, depth=3, horizon=2)                      # a given depth stays; context comes down
    assert f["depth"] == 3 and f["context"] == 4 and f["depth_note"].startswith("context 4, not 10")


def test_a_given_depth_or_context_that_does_not_fit_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(B, "MAX_LEVEL_NODES", 1000)
    proc = _never_merging_4_symbol()
    with pytest.raises(tinyseq.TinyseqError, match=r"^--depth 5: too large .* use --depth <= 4$"):
        B.process_facts(proc, depth=5, horizon=2)
    with pytest.raises(tinyseq.TinyseqError, match=r"^--depth 6 and --context 7: .* use --depth and --context <= 4$"):
        B.process_facts(proc, depth=6, horizon=2, context=7)
    with pytest.raises(tinyseq.TinyseqError, match=r"use a depth <= 4$"):            # msp itself, unchanged
        B.msp(proc, 5)


def test_process_show_lowers_its_default_depth_and_says_so(monkeypatch, tmp_path):
    import json
    from conftest import cli_in_process
    monkeypatch.setattr(B, "MAX_LEVEL_NODES", 1000)
    proc = _never_merging_4_symbol()
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": proc.name, "T": proc.T.tolist()}))
    r = cli_in_process(["process", "show", str(path), "--horizon", "2"])
    assert r.returncode == 0 and "depth 4 and context 4, not 10" in " ".join(r.stdout.split())
    r = cli_in_process(["process", "show", str(path), "--context", "7"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--context 7" in r.stderr and "Traceback" not in r.stderr


def test_a_product_lowers_every_factor_to_the_depth_the_biggest_one_allows(monkeypatch):
    from tinyseq.product import make_product
    monkeypatch.setattr(B, "MAX_LEVEL_NODES", 1000)
    pair = make_product([_never_merging_4_symbol(), tinyseq.process("z1r")])
    f = B.process_facts(pair, horizon=2)
    assert f["depth"] == 4 and f["context"] == 4 and len(f["myopic_entropy_nats"]) == 4
    assert [(p["depth"], p["context"]) for p in f["factors"]] == [(4, 4), (4, 4)]
    assert f["depth_note"].startswith(f"{pair.factors[0].label}: depth 4 and context 4, not 10")
    z1r_alone = B.process_facts(tinyseq.process("z1r"), depth=4, horizon=2, context=4)
    assert f["factors"][1]["myopic_entropy_nats"] == z1r_alone["myopic_entropy_nats"]
    with pytest.raises(tinyseq.TinyseqError, match=rf"^--depth 6: too large for {pair.factors[0].label}"):
        B.process_facts(pair, depth=6, horizon=2)


@pytest.mark.parametrize("name", ["z1r", "mess3"])       # an MSP that closes, and one that never does
def test_an_msp_cut_from_a_deeper_one_is_the_shallow_msp(name):
    proc = tinyseq.process(name)
    cut, direct = B.msp_to(B.msp(proc, 8), 4), B.msp(proc, 4)
    assert (cut.n_distinct, cut.finite, cut.closed_at) == (direct.n_distinct, direct.finite, direct.closed_at)
    np.testing.assert_array_equal(cut.distinct, direct.distinct)
    assert len(cut.levels) == len(direct.levels) == 5
    for a, b in zip(cut.levels, direct.levels):
        np.testing.assert_array_equal(a.beliefs, b.beliefs)
        np.testing.assert_array_equal(a.probs, b.probs)
