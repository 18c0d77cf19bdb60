"""Mixtures against independent computations: h(L) by brute-force enumeration of every sequence with
P(x) = sum_k w_k P_k(x) (each P_k from its own matrices and a stationary law found by power iteration), the
posterior over components by Bayes' rule written out by hand, sampling by component frequencies, the in-context
table on a stub that is the exact Bayes predictor, and every bad spec as one line with exit code 2."""
import itertools
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

import tinyseq
from conftest import cli_in_process
from tinyseq import analysis as A
from tinyseq import beliefs as B
from tinyseq import report
from tinyseq.errors import TinyseqError
from tinyseq.mixture import (Mixture, component_floors, component_posterior, mixture_facts,
                             posterior_by_position)
from tinyseq.processes import sample

SMALL = {"mixture": [["golden_mean:p=0.3", 0.4], ["even:p=0.6", 0.6]]}
TWO_MESS3 = {"mixture": [["mess3", 0.5], ["mess3:x=0.15,a=0.6", 0.5]]}


def power_stationary(T):  # (V, S, S) -> (S,) by iterating a lazy chain from uniform (no eigen-solver)
    M = T.sum(axis=0)
    lazy = 0.5 * (M + np.eye(len(M)))        # same stationary law, aperiodic
    pi = np.full(len(M), 1.0 / len(M))
    for _ in range(5000):
        pi = pi @ lazy
    return pi / pi.sum()


def seq_prob(T, pi, x):  # P(x_1..x_n) = pi T[x_1] ... T[x_n] 1, one matrix at a time
    v = pi.copy()
    for s in x:
        v = v @ T[s]
    return float(v.sum())


def brute_force_h(components, weights, L):  # h(1..L) from H(n) = -sum_x P(x) log P(x), P a mixture of P_k
    pis = [power_stationary(c.T) for c in components]
    V = components[0].vocab
    H = [0.0]
    for n in range(1, L + 1):
        total = 0.0
        for x in itertools.product(range(V), repeat=n):
            p = sum(w * seq_prob(c.T, pi, x) for c, w, pi in zip(components, weights, pis))
            if p > 0:
                total -= p * math.log(p)
        H.append(total)
    return np.diff(H)


def test_h_of_a_small_mixture_matches_brute_force_enumeration():
    mix = tinyseq.process(SMALL)
    comps = [tinyseq.process("golden_mean:p=0.3"), tinyseq.process("even:p=0.6")]
    expected = brute_force_h(comps, [0.4, 0.6], 7)
    assert np.allclose(B.myopic_entropies(mix, 7), expected, atol=1e-12, rtol=0)
    # and the mixture's floor keeps falling while each component's has settled (golden mean: h(2) on)
    assert np.all(np.diff(expected[1:]) < 0)


def test_posterior_over_components_is_bayes_rule_by_hand():
    mix = tinyseq.process(TWO_MESS3)
    comps = [tinyseq.process("mess3"), tinyseq.process("mess3:x=0.15,a=0.6")]
    pis = [power_stationary(c.T) for c in comps]
    x = [0, 0, 1, 0, 2, 0, 0]
    post = component_posterior(mix, B.belief_states(mix, np.array([x])))[0]     # (T, 2)
    for t in range(len(x)):
        lik = np.array([0.5 * seq_prob(c.T, pi, x[:t + 1]) for c, pi in zip(comps, pis)])
        assert np.allclose(post[t], lik / lik.sum(), atol=1e-12)


def test_token_l_reveals_the_component_by_the_gap_between_floors():
    """h(L) - sum_k w_k h_k(L) = H(C | X_1..L-1) - H(C | X_1..L): two routes, one identity."""
    mix = tinyseq.process(SMALL)
    depth = 8
    h = B.myopic_entropies(mix, depth)
    known = np.array([0.4, 0.6]) @ component_floors(mix, depth)
    ent = np.array(posterior_by_position(mix, depth)["entropy_nats"])          # after 0..depth tokens
    assert np.allclose(h - known, ent[:-1] - ent[1:], atol=1e-12)
    assert ent[0] == pytest.approx(-(0.4 * math.log(0.4) + 0.6 * math.log(0.6)), abs=1e-12)


def test_facts_of_the_two_mess3_mixture():
    f = mixture_facts(tinyseq.process(TWO_MESS3), 6)
    assert f["weights"] == [0.5, 0.5] and len(f["component_myopic_entropy_nats"]) == 2
    h, known = np.array(f["myopic_entropy_nats"]), np.array(f["known_component_floor_nats"])
    assert np.all(h >= known - 1e-12) and np.all(np.diff(h) < 0)
    assert f["prior_entropy_nats"] == pytest.approx(math.log(2))
    assert mixture_facts(tinyseq.process("mess3"), 6) is None


def constant(symbol):  # one state that always emits `symbol` (of 2)
    T = [[[0.0]], [[0.0]]]
    T[symbol][0][0] = 1.0
    return {"name": f"always{symbol}", "symbols": ["0", "1"], "T": T}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_each_sampled_sequence_stays_in_one_component(backend):
    mix = tinyseq.process({"mixture": [[constant(0), 0.3], [constant(1), 0.7]]})
    tokens = sample(mix, 20_000, 12, np.random.default_rng(0), backend=backend)
    rows = tokens.sum(axis=1)
    assert set(np.unique(rows)) <= {0, 12}                     # all zeros or all ones: never switches
    assert abs((rows == 12).mean() - 0.7) < 0.02               # 6 standard deviations of the frequency


def test_component_frequencies_of_two_noisy_processes():
    """Components that mostly emit 0 (0.9) or mostly 1 (0.9): a sequence's share of ones tells its component."""
    a = {"name": "mostly0", "symbols": ["0", "1"], "T": [[[0.9]], [[0.1]]]}
    b = {"name": "mostly1", "symbols": ["0", "1"], "T": [[[0.1]], [[0.9]]]}
    tokens = sample(tinyseq.process({"mixture": [[a, 0.25], [b, 0.75]]}), 4000, 200, np.random.default_rng(1))
    share = tokens.mean(axis=1)
    assert np.all((share < 0.25) | (share > 0.75))             # no sequence mixes the two (binomial sd 0.02)
    assert abs((share > 0.5).mean() - 0.75) < 0.03


def test_the_json_form_round_trips_whole():
    mix = tinyseq.process(TWO_MESS3)
    again = tinyseq.process(json.loads(json.dumps(mix.to_spec())))
    assert isinstance(again, Mixture) and again.label == mix.label
    assert np.array_equal(again.T, mix.T) and np.array_equal(again.stationary, mix.stationary)
    inline = tinyseq.process(json.dumps(TWO_MESS3))
    assert inline.label == "mixture(0.5 mess3:x=0.05,a=0.85 + 0.5 mess3:x=0.15,a=0.6)"


def test_a_checkpoint_keeps_the_mixture(tmp_path):
    from tinyseq.checkpoint import load_model, save
    from tinyseq.models import build_model

    mix = tinyseq.process(TWO_MESS3)
    model = build_model("rnn", {"n_ctx": 4}, mix.vocab, "float32", 0, "numpy")
    path = save(str(tmp_path / "m.npz"), model, process_spec=mix.to_spec())
    loaded = load_model(path).process
    assert isinstance(loaded, Mixture) and loaded.label == mix.label and np.array_equal(loaded.T, mix.T)


# ----------------------------------------------------------------------------------------------------------
# the in-context table on a stub that is the exact Bayes predictor
class BayesStub:
    """Logits: the exact Bayes next-token log-probabilities. Activations: the exact belief (6 states)."""

    def __init__(self, proc, n_ctx):
        self.proc = proc
        self.config = SimpleNamespace(n_ctx=n_ctx, d_vocab=proc.vocab)

    def logits(self, tokens):
        return np.log(np.clip(B.next_token_probs(self.proc, B.belief_states(self.proc, tokens)), 1e-300, None))

    def activations(self, tokens):
        return {"belief": B.belief_states(self.proc, tokens)}


@pytest.fixture(scope="module")
def stub_result():
    mix = tinyseq.process(TWO_MESS3)
    return mix, A.analyse(BayesStub(mix, 6), mix, horizon=2, random_init=None)


def test_the_bayes_stub_sits_on_the_mixture_floor_at_every_position(stub_result):
    mix, a = stub_result
    c = a["in_context"]
    h = B.myopic_entropies(mix, 7)                             # L = 1..7; the table has L = 2..7
    hk = [B.myopic_entropies(tinyseq.process(s), 7) for s in ("mess3", "mess3:x=0.15,a=0.6")]
    assert [p["position"] for p in c["by_position"]] == list(range(2, 8))
    for p in c["by_position"]:
        L = p["position"]
        assert p["loss_nats"] == pytest.approx(h[L - 1], abs=1e-9)
        assert p["floor_nats"] == pytest.approx(h[L - 1], abs=1e-12) and abs(p["gap_nats"]) < 1e-9
        assert np.allclose(p["component_floors_nats"], [hk[0][L - 1], hk[1][L - 1]], atol=1e-12)


def test_the_posterior_probe_reads_the_posterior_from_the_belief(stub_result):
    mix, a = stub_result
    post = a["in_context"]["posterior"]
    exact = posterior_by_position(mix, 6)
    for t, p in enumerate(post):
        assert p["entropy_nats"] == pytest.approx(exact["entropy_nats"][t + 1], abs=1e-12)
        assert p["true_component_posterior"] == pytest.approx(exact["true_component_posterior"][t + 1], abs=1e-12)
        assert p["probe_mse"] < 1e-15                          # the posterior is linear in the belief
    assert post[0]["spread_mse"] < 1e-15 and post[0]["probe_r2"] is None   # the first token says nothing: all 1/2
    assert post[-1]["spread_mse"] > 1e-3 and post[-1]["probe_r2"] > 1 - 1e-9
    text = report.in_context_table(a)
    assert "Learning in context" in text and "h_2(L)" in text and "mess3:x=0.15,a=0.6 (weight 0.5)" in text


def test_other_processes_have_no_in_context_table():
    mess3 = tinyseq.process("mess3")
    a = A.analyse(BayesStub(mess3, 4), mess3, horizon=1, random_init=None)
    assert a["in_context"] is None and report.in_context_table(a) == ""


# ----------------------------------------------------------------------------------------------------------
# bad specs: one line, exit 2
def write(tmp_path, obj, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


BAD = [
    ({"mixture": [["mess3", 0.5], ["mess3:x=0.15", 0.4]]}, "weights sum to 0.9"),
    ({"mixture": [["mess3", 1.5], ["mess3:x=0.15", -0.5]]}, "weights must be positive"),
    ({"mixture": []}, "non-empty list"),
    ({"mixture": [["mess3", 0.5], ["z1r", 0.5]]}, "must share the vocabulary"),
    ({"mixture": [[{"mixture": [["mess3", 1.0]]}, 0.5], ["mess3", 0.5]]}, "nested mixtures are not supported"),
    ({"mixture": [["mess3", 0.5], ["nope", 0.5]]}, "component 2: unknown process 'nope'"),
    ({"mixture": [["mess3"], ["mess3", 0.5]]}, "[component, weight] pair"),
    ({"mixture": [["mess3", 1.0]], "name": "x"}, "only the key 'mixture'"),
    ({"mixture": [["pathstar:d=2,l=5,n=20", 1.0]]}, "is a task, not a hidden Markov process"),
]


@pytest.mark.parametrize("spec,needle", BAD)
def test_bad_mixture_file_is_one_line_exit_2(tmp_path, spec, needle):
    r = cli_in_process(["process", "show", write(tmp_path, spec)])
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_mixture_file_given_as_a_component_counts_as_nesting(tmp_path):
    inner = write(tmp_path, TWO_MESS3, "inner.json")
    with pytest.raises(TinyseqError, match="nested mixtures are not supported"):
        tinyseq.process({"mixture": [[inner, 0.5], ["mess3", 0.5]]})


def test_a_plain_hmm_file_must_still_be_ergodic(tmp_path):
    """The mixture's block-diagonal T as a plain HMM file has no stated start: the one-closed-class check."""
    mix = tinyseq.process(TWO_MESS3)
    path = write(tmp_path, {"name": "blocks", "symbols": mix.symbols, "T": mix.T.tolist()})
    r = cli_in_process(["process", "show", path])
    assert r.returncode == 2 and "not ergodic: 2 closed classes" in r.stderr and len(r.stderr.splitlines()) == 1


def test_bad_inline_json_is_one_line(tmp_path):
    r = cli_in_process(["process", "show", '{"mixture": [["mess3", 0.5],'])
    assert r.returncode == 2 and "inline process spec is not valid JSON" in r.stderr


def test_a_stated_start_must_be_stationary():
    from tinyseq.processes import make_process
    T = tinyseq.process(TWO_MESS3).T
    with pytest.raises(TinyseqError, match="not stationary"):
        make_process(T, init=[1, 0, 0, 0, 0, 0])
    with pytest.raises(TinyseqError, match="sums to 0.5"):
        make_process(T, init=[0.5 / 6] * 6)


def test_process_show_prints_the_mixture_facts():
    spec = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "two_mess3_mixture.json")
    r = cli_in_process(["process", "show", spec, "--depth", "5", "--json"])
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)["mixture"]
    assert f["components"] == ["mess3:x=0.05,a=0.85", "mess3:x=0.15,a=0.6"]
    assert np.allclose(f["myopic_entropy_nats"], B.myopic_entropies(tinyseq.process(TWO_MESS3), 5), atol=1e-12)
    r = cli_in_process(["process", "show", spec, "--depth", "5"])
    assert r.returncode == 0 and "H(C|x)" in r.stdout and "h_2(L)" in r.stdout


def test_the_told_floor_is_the_weighted_component_floors(stub_result):
    mix, a = stub_result
    for p in a["in_context"]["by_position"]:
        assert p["known_component_floor_nats"] == pytest.approx(0.5 * sum(p["component_floors_nats"]), abs=1e-15)
        assert p["known_component_floor_nats"] <= p["floor_nats"] + 1e-12   # knowing the component never hurts
