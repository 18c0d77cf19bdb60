"""Process catalogue, validation and sampling. Expected values come from ANCHORS.md (published definitions)."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyseq
from tinyseq.errors import TinyseqError
from tinyseq.processes import (catalogue_names, make_process, parse_process, sample, sample_kernel,
                               sample_reference, _joint_cdf)


def random_hmm(seed, V=None, S=None, sparsity=0.0):
    """A random ergodic HMM: dense positive rows (optionally with some zeros), normalised per state."""
    rng = np.random.default_rng(seed)
    V = V or int(rng.integers(2, 4))
    S = S or int(rng.integers(1, 5))
    T = rng.random((V, S, S)) + 0.05
    if sparsity:
        T *= rng.random((V, S, S)) > sparsity
        T[0, np.arange(S), (np.arange(S) + 1) % S] += 0.3   # a cycle keeps it ergodic
    T /= T.sum(axis=(0, 2))[None, :, None]
    return make_process(T, name=f"random{seed}")


@pytest.mark.parametrize("name,stationary", [
    ("mess3", [1 / 3] * 3), ("rrxor", [2 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6]), ("z1r", [1 / 3] * 3),
    ("even", [2 / 3, 1 / 3]), ("golden_mean", [2 / 3, 1 / 3]), ("nond", [2 / 7, 2 / 7, 3 / 7])])
def test_stationary_matches_anchors(name, stationary):
    p = tinyseq.process(name)
    np.testing.assert_allclose(p.stationary, stationary, atol=1e-12)
    np.testing.assert_allclose(p.stationary @ p.M, p.stationary, atol=1e-12)


def test_mess3_definition_entrywise():
    # T[k][i][j] = P(j | i) P(k | j), written out independently of the einsum in processes.py
    x, a = 0.15, 0.6
    T = tinyseq.process("mess3:x=0.15,a=0.6").T
    for k in range(3):
        for i in range(3):
            for j in range(3):
                pj = 1 - 2 * x if i == j else x
                pk = a if k == j else (1 - a) / 2
                assert T[k, i, j] == pytest.approx(pj * pk, abs=1e-15)


def test_parameters_parse_and_label_roundtrip():
    p = tinyseq.process("rrxor:p1=0.3,p2=0.7")
    assert p.params == {"p1": 0.3, "p2": 0.7}
    assert tinyseq.process(p.label).T.tolist() == p.T.tolist()
    assert set(catalogue_names()) == {"mess3", "rrxor", "z1r", "even", "golden_mean", "nond"}


def test_json_roundtrip(tmp_path):
    p = tinyseq.process("z1r")
    path = tmp_path / "z.json"
    path.write_text(json.dumps({"name": "myz1r", "symbols": ["a", "b"], "T": p.T.tolist()}))
    q = tinyseq.process(str(path))
    assert q.name == "myz1r" and q.symbols == ["a", "b"]
    np.testing.assert_array_equal(q.T, p.T)
    assert parse_process(p.to_spec()).T.tolist() == p.T.tolist()


BAD_SPECS = [
    ("nosuch", "unknown process"),
    ("mess3:q=1", "has no parameter 'q'"),
    ("mess3:x", "malformed"),
    ("mess3:x=abc", "not a number"),
    ("mess3:x=nan", "finite"),
    ("mess3:x=0.7", "must lie in"),
    ("mess3:", "no parameters"),
    ("mess3:x=0", "not ergodic"),
    ("", "empty"),
]


@pytest.mark.parametrize("spec,needle", BAD_SPECS)
def test_bad_specs_say_what_is_wrong(spec, needle):
    with pytest.raises(TinyseqError, match=needle) as e:
        tinyseq.process(spec)
    assert "\n" not in str(e.value)


BAD_JSON = [
    ("not json at all {", "not valid JSON"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps({"name": "x"}), "missing key 'T'"),
    (json.dumps({"T": [[[1.0]]], "extra": 1}), "unknown keys"),
    (json.dumps({"T": [[[0.5, 0.5], [1.0]]]}), "entries, expected 2"),
    (json.dumps({"T": [[[0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]]}), "ragged|expected"),
    (json.dumps({"T": [[[0.5, "a"], [0.5, 0.5]]]}), "is not a number"),
    (json.dumps({"T": [[[1.5, -0.5], [0.5, 0.5]]]}), "negative"),
    ('{"T": [[[NaN, 1.0], [0.5, 0.5]]]}', "finite"),
    ('{"T": [[[Infinity, 1.0], [0.5, 0.5]]]}', "finite"),
    (json.dumps({"T": [[[0.5, 0.4], [0.5, 0.5]]]}), "row 0 of sum_x T"),
    (json.dumps({"T": [[[1.0, 0.0], [0.0, 1.0]]]}), "not ergodic"),
    (json.dumps({"T": [[[0.5, 0.5, 0], [0.5, 0.5, 0]]]}), "expected 3|square|entries"),
    (json.dumps({"T": []}), "empty"),
    (json.dumps({"T": [[[1.0]]], "symbols": ["a", "b"]}), "symbols"),
    (json.dumps({"T": [[[0.5]], [[0.5]]], "symbols": ["a", "a"]}), "distinct"),
]


@pytest.mark.parametrize("text,needle", BAD_JSON)
def test_bad_json_files(tmp_path, text, needle):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TinyseqError, match=needle) as e:
        tinyseq.process(str(path))
    assert "\n" not in str(e.value)


def test_missing_and_directory_json(tmp_path):
    with pytest.raises(TinyseqError, match="does not exist"):
        tinyseq.process(str(tmp_path / "nope.json"))
    with pytest.raises(TinyseqError, match="directory"):
        tinyseq.process(str(tmp_path) + "/")


def test_transient_states_are_fine():
    # state 1 is transient (never returned to); one closed class {0}: unique stationary distribution
    p = make_process([[[1.0, 0.0], [0.5, 0.5]]])
    np.testing.assert_allclose(p.stationary, [1.0, 0.0])


# ---------------------------------------------------------------------------------------------------------
# sampling
def test_numba_sampler_equals_numpy_reference():
    for name in catalogue_names():
        p = tinyseq.process(name)
        rng = np.random.default_rng(1)
        u0, u = rng.random(50), rng.random((50, 30))
        pi_cdf = np.cumsum(p.stationary)
        pi_cdf[-1] = 1.0
        a = sample_reference(_joint_cdf(p), pi_cdf, u0, u, p.n_states)
        b = sample_kernel(_joint_cdf(p), pi_cdf, u0, u, p.n_states)
        np.testing.assert_array_equal(a, b)


def test_sampling_is_seeded():
    p = tinyseq.process("mess3")
    a = p.sample(8, 20, np.random.default_rng(3))
    b = p.sample(8, 20, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 20) and a.dtype == np.int64


def test_sampled_sequences_are_possible():
    from tinyseq.beliefs import sequence_probs
    for name in ["rrxor", "z1r", "even", "golden_mean", "nond"]:
        p = tinyseq.process(name)
        toks = p.sample(200, 12, np.random.default_rng(0))
        assert (sequence_probs(p, toks) > 0).all(), name


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_sampled_frequencies_match_exact_probabilities(seed):
    """1- and 2-block frequencies within 5 standard errors of the exact stationary probabilities."""
    from tinyseq.beliefs import joint_future
    p = random_hmm(seed, sparsity=0.3)
    n = 20_000
    toks = sample(p, n, 2, np.random.default_rng(seed))
    exact1 = p.stationary @ p.emission                   # (V,)
    exact2 = joint_future(p, p.stationary, 2)            # (V, V)
    freq1 = np.bincount(toks[:, 0], minlength=p.vocab) / n
    freq2 = np.bincount(toks[:, 0] * p.vocab + toks[:, 1], minlength=p.vocab ** 2).reshape(p.vocab, p.vocab) / n
    for f, e in ((freq1, exact1), (freq2, exact2)):
        se = np.sqrt(e * (1 - e) / n) + 1e-12
        assert np.all(np.abs(f - e) <= 5 * se + 1e-9), (f, e)
    # later positions too: the process is stationary, so position 1 has the same law as position 0
    freq_b = np.bincount(toks[:, 1], minlength=p.vocab) / n
    assert np.all(np.abs(freq_b - exact1) <= 5 * np.sqrt(exact1 * (1 - exact1) / n) + 1e-9)
