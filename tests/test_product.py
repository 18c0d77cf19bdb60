"""Products of independent processes against exact values computed another way: the joint HMM built here by
explicit loops over tuples, its beliefs by a plain forward filter, its h(L) and k-step Bayes accuracy by
enumerating every short joint sequence; closed-form entropy rates; stub networks whose activations are the
factor beliefs (factor R^2 = 1) or the joint belief."""
import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import tinyseq
from conftest import cli_in_process, filter_beliefs
from tinyseq import analysis as A
from tinyseq import beliefs as B
from tinyseq import report
from tinyseq.errors import TinyseqError
from tinyseq.processes import process_from_dict
from tinyseq.product import Product


def joint_by_hand(p1, p2):  # -> (V1 V2, S1 S2, S1 S2), index (a, b) -> a * n2 + b
    V1, S1, V2, S2 = p1.vocab, p1.n_states, p2.vocab, p2.n_states
    T = np.zeros((V1 * V2, S1 * S2, S1 * S2))
    for x1, x2, i1, i2, j1, j2 in itertools.product(range(V1), range(V2), range(S1), range(S2), range(S1), range(S2)):
        T[x1 * V2 + x2, i1 * S2 + i2, j1 * S2 + j2] = p1.T[x1, i1, j1] * p2.T[x2, i2, j2]
    pi = np.array([p1.stationary[i1] * p2.stationary[i2] for i1 in range(S1) for i2 in range(S2)])
    return T, pi


def filter_by_hand(T, pi, seq):  # one sequence -> (len, S) beliefs, a plain loop
    eta, out = pi.copy(), []
    for x in seq:
        u = eta @ T[x]
        eta = u / u.sum()
        out.append(eta)
    return np.array(out)


def all_sequences(T, pi, length):  # every joint sequence of `length` with P > 0: [(seq, prob)]
    out = []
    for seq in itertools.product(range(T.shape[0]), repeat=length):
        v = pi.copy()
        for x in seq:
            v = v @ T[x]
        if v.sum() > 0:
            out.append((seq, v.sum()))
    return out


@pytest.fixture(scope="module")
def pair():
    return tinyseq.process("mess3*z1r:p=0.5")


def test_joint_T_symbols_and_stationary_match_the_tuple_definition(pair):
    p1, p2 = tinyseq.process("mess3"), tinyseq.process("z1r:p=0.5")
    T, pi = joint_by_hand(p1, p2)
    assert isinstance(pair, Product) and pair.T.shape == (6, 9, 9)
    np.testing.assert_allclose(pair.T, T, atol=1e-15)
    np.testing.assert_allclose(pair.stationary, pi, atol=1e-15)
    assert pair.symbols == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    assert pair.label == "mess3:x=0.05,a=0.85*z1r:p=0.5"


def test_joint_belief_is_the_outer_product_of_the_factor_beliefs(pair):
    T, pi = joint_by_hand(tinyseq.process("mess3"), tinyseq.process("z1r:p=0.5"))
    tokens = pair.sample(5, 12, np.random.default_rng(3))
    got = B.belief_states(pair, tokens)                                    # through the factors
    for b in range(5):
        np.testing.assert_allclose(got[b], filter_by_hand(T, pi, tokens[b]), atol=1e-12)


def test_entropy_rate_is_the_sum_of_the_factors():
    # golden mean (p = 1/2) and even (p = 1/2) both have h_mu = 2/3 bit exactly (stationary law (2/3, 1/3) on
    # states whose next symbol is a fair coin or certain); their product has 4/3 bits
    f = B.process_facts(tinyseq.process("golden_mean*even"), depth=8, horizon=2, context=4)
    assert f["entropy_rate_exact"] and f["entropy_rate_bits"] == pytest.approx(4 / 3, abs=1e-12)
    assert f["entropy_rate_nats"] == pytest.approx(sum(p["entropy_rate_nats"] for p in f["factors"]), abs=1e-15)
    assert [p["name"] for p in f["factors"]] == ["golden_mean:p=0.5", "even:p=0.5"]


def test_h_of_L_matches_block_entropies_of_every_joint_sequence(pair):
    T, pi = joint_by_hand(tinyseq.process("mess3"), tinyseq.process("z1r:p=0.5"))
    H = [0.0]
    for L in range(1, 5):                                                  # 6^4 = 1,296 joint sequences
        probs = np.array([p for _, p in all_sequences(T, pi, L)])
        H.append(float(-(probs * np.log(probs)).sum()))
    np.testing.assert_allclose(B.myopic_entropies(pair, 4), np.diff(H), atol=1e-12)


def test_kstep_bayes_accuracy_matches_enumeration_of_the_joint(pair):
    T, pi = joint_by_hand(tinyseq.process("mess3"), tinyseq.process("z1r:p=0.5"))
    M, E = T.sum(axis=0), T.sum(axis=2).T
    context, horizon = 3, 3
    want = np.zeros(horizon)
    for seq, prob in all_sequences(T, pi, context):
        eta = filter_by_hand(T, pi, seq)[-1]
        for k in range(1, horizon + 1):
            want[k - 1] += prob * (eta @ np.linalg.matrix_power(M, k - 1) @ E).max()
    f = B.process_facts(pair, depth=4, horizon=horizon, context=context)
    np.testing.assert_allclose(f["kstep_bayes_accuracy"], want, atol=1e-12)
    assert f["msp_states"] is None                                         # the joint MSP is never enumerated


def test_the_three_spec_forms_give_the_same_product(tmp_path, pair):
    path = tmp_path / "prod.json"
    path.write_text(json.dumps({"product": ["mess3", {"name": "z", "T": tinyseq.process("z1r").T.tolist()}]}))
    for p in (tinyseq.process({"product": ["mess3", "z1r:p=0.5"]}), tinyseq.process(str(path))):
        np.testing.assert_array_equal(p.T, pair.T)


def test_the_stored_spec_reloads_the_whole_product(pair, tmp_path):
    from tinyseq.checkpoint import save
    from tinyseq.models import build_model
    spec = json.loads(json.dumps(pair.to_spec()))                          # what a checkpoint stores
    assert list(spec) == ["product"] and all("T" in f for f in spec["product"])
    again = process_from_dict(spec)
    np.testing.assert_array_equal(again.T, pair.T)
    assert again.label == pair.label and [f.label for f in again.factors] == [f.label for f in pair.factors]
    model = build_model("transformer", {"n_ctx": 4, "d_model": 8, "d_mlp": 8, "n_layers": 1}, pair.vocab)
    save(tmp_path / "m.npz", model, process_spec=pair.to_spec())
    loaded = tinyseq.load(tmp_path / "m.npz").process
    assert isinstance(loaded, Product) and loaded.label == pair.label


def test_factors_with_a_shared_period_still_sample_from_the_independent_start():
    # z1r's states cycle with period 3: the joint chain of z1r*z1r has 3 closed classes (the relative phase),
    # but the factors start independently, so the joint stationary law is the product of theirs
    p = tinyseq.process("z1r*z1r")
    np.testing.assert_allclose(p.stationary, np.full(9, 1 / 9), atol=1e-15)
    tokens = p.sample(20_000, 2, np.random.default_rng(0))
    z = tinyseq.process("z1r")
    for x1, x2 in itertools.product(range(4), repeat=2):                   # joint symbol x = a * 2 + b
        want = B.sequence_probs(z, [[x1 // 2, x2 // 2]])[0] * B.sequence_probs(z, [[x1 % 2, x2 % 2]])[0]
        got = np.mean((tokens[:, 0] == x1) & (tokens[:, 1] == x2))
        assert abs(got - want) < 0.012, (x1, x2, got, want)


@pytest.mark.parametrize("spec, needle", [
    ({"product": []}, "empty list"),
    ({"product": ["mess3"]}, "at least 2 factors"),
    ({"product": "mess3"}, "must be a list"),
    ({"product": ["mess3", {"product": ["z1r", "even"]}]}, "product inside a product"),
    ({"product": ["mess3", {"mixture": ["z1r", "even"]}]}, "mixture inside a product"),
    ({"product": ["mess3", "nope"]}, "unknown process 'nope'"),
    ({"product": ["mess3", 3]}, "got int"),
    ({"product": ["mess3", "z1r"], "weights": [1]}, "unknown keys ['weights']"),
    ("mess3*", "empty factor"),
    ("mess3**z1r", "empty factor"),
    ("mess3*z1r:q=1", "no parameter 'q'"),
])
def test_bad_products_are_one_line_errors(spec, needle):
    with pytest.raises(TinyseqError) as e:
        tinyseq.process(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_products_on_the_command_line_exit_2_with_one_line(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"product": ["mess3", "z1r*even"]}))
    for spec, needle in ((str(nested), "itself a product"), ("mess3*foo", "unknown process 'foo'")):
        r = cli_in_process(["process", "show", spec])
        assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_process_show_prints_the_factors_and_the_summed_rate():
    r = cli_in_process(["process", "show", "golden_mean*even", "--depth", "6"])
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())                                      # undo the wrapping
    assert "golden_mean:p=0.5" in text and "even:p=0.5" in text
    assert "1.333333 bits, the sum of the factors'" in text
    assert "sum (S_i - 1) = 2" in text and "prod S_i - 1 = 3" in text


# ----------------------------------------------------------------------------------------------------------
# the factor table on stub networks
class FactorStub:
    """A 'network' whose logits are the exact Bayes predictions and whose one hook is the factor beliefs side
    by side ('factors'), the joint belief ('joint'), or noise."""

    def __init__(self, proc, n_ctx, acts="factors", seed=0):
        self.proc, self.acts, self.seed = proc, acts, seed
        self.T, self.pi = joint_by_hand(*proc.factors)
        self.config = SimpleNamespace(n_ctx=n_ctx, d_vocab=proc.vocab)

    def _joint(self, tokens):  # (N, T) -> (N, T, S) by the plain filter on the joint built by hand
        return filter_beliefs(self.T, self.pi, tokens)

    def logits(self, tokens):
        return np.log(np.clip(self._joint(np.asarray(tokens)) @ self.T.sum(axis=2).T, 1e-300, None))

    def activations(self, tokens):
        tokens = np.asarray(tokens)
        if self.acts == "noise":
            return {"h": np.random.default_rng(self.seed).standard_normal(tokens.shape + (6,))}
        b = self._joint(tokens)                                              # (N, T, S1 S2)
        S1, S2 = self.proc.factors[0].n_states, self.proc.factors[1].n_states
        if self.acts == "joint":
            return {"h": b}
        b = b.reshape(b.shape[:-1] + (S1, S2))
        # the marginals without their last coordinate (1 minus the others): (N, T, S1 + S2 - 2); a full belief's
        # coordinates sum to 1, an exact collinearity the float32 activations would blur into noise to fit
        return {"h": np.concatenate([b.sum(axis=-1)[..., :-1], b.sum(axis=-2)[..., :-1]], axis=-1)}


@pytest.fixture(scope="module")
def factor_result(pair):
    noise = lambda seed: FactorStub(pair, 5, acts="noise", seed=seed)  # noqa: E731
    return A.analyse(FactorStub(pair, 5), pair, horizon=2, random_init=noise)


def test_activations_that_are_the_factor_beliefs_give_factor_r2_one(factor_result):
    (row,) = factor_result["factors"]["hooks"]
    assert [s["r2"] for s in row["factors"]] == pytest.approx([1.0, 1.0], abs=1e-9)
    # the same features, so the joint read from them is exactly the factored ceiling, and it is below 1
    ceiling = factor_result["factors"]["factored_ceiling"]["r2"]
    assert row["joint"]["r2"] == pytest.approx(ceiling, abs=1e-6) and ceiling < 0.99
    # the two factors sit in disjoint coordinates: their subspaces are (nearly) orthogonal, 2 angles each
    (pair_angles,) = row["angles_degrees"]
    assert pair_angles["factors"] == [1, 2] and len(pair_angles["angles"]) == 2
    assert min(pair_angles["angles"]) > 80
    assert all(s["r2"] < 0.2 for s in row["random_init"]["factors"])
    text = " ".join(report.probe_report(factor_result).split())
    assert "Each factor's belief" in text and "f2 = z1r:p=0.5" in text
    assert "sum (S_i - 1) = 4 dimensions together, the joint belief simplex prod S_i - 1 = 8" in text


def test_activations_that_are_the_joint_belief_give_every_r2_one(pair):
    r = A.analyse(FactorStub(pair, 5, acts="joint"), pair, horizon=1, random_init=None)
    (row,) = r["factors"]["hooks"]
    assert [s["r2"] for s in row["factors"]] + [row["joint"]["r2"]] == pytest.approx([1, 1, 1], abs=1e-9)
    assert row["random_init"] is None


def test_dimension_references(pair):
    assert A.belief_dimensions(pair) == {"simplex": 8, "factors_sum": 4}
    assert A.belief_dimensions(tinyseq.process("mess3")) == {"simplex": 2, "factors_sum": None}
    assert A.factor_recovery(tinyseq.process("mess3"), None, []) is None
    assert math.prod(f.n_states for f in pair.factors) - 1 == A.belief_dimensions(pair)["simplex"]


def test_three_factors_flatten_row_major():
    a, b, c = (tinyseq.process(n) for n in ("even", "z1r", "golden_mean"))
    p = tinyseq.process("even*z1r*golden_mean")
    want = np.einsum("aip,bjq,ckr->abcijkpqr", a.T, b.T, c.T).reshape(8, 12, 12)
    np.testing.assert_allclose(p.T, want, atol=1e-15)
    assert p.symbols[5] == "1.0.1"                                         # 5 = 1*4 + 0*2 + 1
    tokens = p.sample(3, 6, np.random.default_rng(1))
    x = tokens.copy()
    parts = [x // 4, (x // 2) % 2, x % 2]
    joint = np.einsum("nti,ntj,ntk->ntijk", *[B.belief_states(f, t) for f, t in zip((a, b, c), parts)])
    np.testing.assert_allclose(B.belief_states(p, tokens), joint.reshape(3, 6, 12), atol=1e-12)


def test_subspace_angles_of_known_planes():
    theta = np.radians(30.0)
    e = np.eye(4)
    first = e[:, :2]                                                       # the (e1, e2) plane
    second = np.stack([np.cos(theta) * e[:, 0] + np.sin(theta) * e[:, 2], e[:, 3]], axis=1)
    (got,) = A.subspace_angles([first, second])
    assert got["angles"] == pytest.approx([30.0, 90.0], abs=1e-9)
    assert [g["factors"] for g in A.subspace_angles([first, second, first])] == [[1, 2], [1, 3], [2, 3]]
    assert A.subspace_angles([first, second, first])[1]["angles"] == pytest.approx([0.0, 0.0], abs=1e-6)
