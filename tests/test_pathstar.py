"""The path-star task: sampled graphs checked by an independent decoder, exact layout, chance levels against
stub models, the plan probe against features with a known answer, and the masked loss against finite
differences."""
import math

import numpy as np
import pytest

from tinyseq import pathstar as ps
from tinyseq.errors import TinyseqError
from tinyseq.gradcheck import numerical_grad, rel_err
from tinyseq.nn import ops, ops_numba

SPECS = ["pathstar", "pathstar:d=3,l=4,n=12", "pathstar:d=5,l=2,n=6", "pathstar:d=2,l=7,n=40"]


# ----------------------------------------------------------------------------------------------------------
# an independent reading of a sequence: only the documented layout, no code from tinyseq.pathstar
def decode(spec, seq):  # one (L,) sequence -> edges [(u, v)], start, goal, path (l,)
    n, E = spec.n, spec.d * (spec.l - 1)
    edges = []
    for i in range(E):
        u, v, sep = seq[3 * i:3 * i + 3]
        assert sep == n, "every edge ends with ','"
        edges.append((int(u), int(v)))
    q = 3 * E
    assert seq[q] == n + 1 and seq[q + 3] == n + 2, "'|' start goal '='"
    return edges, int(seq[q + 1]), int(seq[q + 2]), [int(x) for x in seq[q + 4:]]


def solve(spec, prompt):  # (P,) prompt -> the path start..goal, by walking parents up from the goal
    edges, start, goal, _ = decode(spec, np.concatenate([prompt, np.zeros(spec.l, dtype=np.int64)]))
    parent = {v: u for u, v in edges}
    path = [goal]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


@pytest.mark.parametrize("text", SPECS)
def test_sampled_graphs_are_path_stars(text):
    spec = ps.parse_spec(text)
    d, l, n = spec.d, spec.l, spec.n
    seqs = ps.encode(spec, ps.sample_graphs(spec, np.random.default_rng(1), 300))
    assert seqs.shape == (300, 3 * d * (l - 1) + 4 + l) and seqs.shape[1] == spec.seq_len
    for seq in seqs:
        edges, start, goal, path = decode(spec, seq)
        nodes = {x for e in edges for x in e}
        assert len(nodes) == d * (l - 1) + 1 and all(0 <= x < n for x in nodes)      # distinct labels
        assert len(edges) == len(nodes) - 1 and len(set(edges)) == len(edges)
        degree = {x: sum(x in e for e in edges) for x in nodes}
        assert degree[start] == d and degree[goal] == 1
        assert sorted(degree.values()) == sorted([d] + [2] * (d * (l - 2)) + [1] * d)
        # a tree: every node but the centre has exactly one parent, and walking up reaches the centre
        parents = {v: u for u, v in edges}
        assert set(parents) == nodes - {start}
        for x in nodes:
            for _ in range(l):
                x = parents.get(x, x)
            assert x == start
        assert len(path) == l and path[0] == start and path[-1] == goal
        assert all((path[i], path[i + 1]) in edges for i in range(l - 1))


def test_layout_by_hand():
    """d=2, l=2, n=3: centre + two leaves, every token fixed by the labels, edge order and goal arm."""
    spec = ps.parse_spec("pathstar:d=2,l=2,n=3")
    g = ps.Graphs(labels=np.array([[2, 0, 1]]), edge_order=np.array([[1, 0]]), arm=np.array([0]))
    # edges written: canonical 1 (2 -> 1), then canonical 0 (2 -> 0); start 2, goal 0 (arm 0's leaf)
    # tokens: 3 ",", 4 "|", 5 "=", 6 "$"
    assert ps.encode(spec, g).tolist() == [[2, 1, 3, 2, 0, 3, 4, 2, 0, 5, 2, 0]]
    assert ps.encode(spec, g, "reverse").tolist() == [[2, 1, 3, 2, 0, 3, 4, 2, 0, 5, 0, 2]]
    assert (spec.vocab, spec.prompt_len, spec.n_ctx, spec.dummy) == (7, 10, 11, 6)


def test_same_seed_same_batch():
    spec = ps.parse_spec("pathstar")
    a = ps.sample_batch(spec, np.random.default_rng(7), 64, "ntp")
    b = ps.sample_batch(spec, np.random.default_rng(7), 64, "ntp")
    c = ps.sample_batch(spec, np.random.default_rng(8), 64, "ntp")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_sampling_is_uniform():
    """Goal arm uniform over d; each label in a graph with probability NN / n; first edge uniform over E."""
    spec = ps.parse_spec("pathstar:d=3,l=4,n=15")
    N = 6000
    g = ps.sample_graphs(spec, np.random.default_rng(3), N)

    def within(counts, p):  # binomial counts within 5 standard deviations of N p
        return np.all(np.abs(counts - N * p) < 5 * math.sqrt(N * p * (1 - p)))

    assert within(np.bincount(g.arm, minlength=3), 1 / 3)
    assert within(np.bincount(g.labels.ravel(), minlength=15), 10 / 15)
    assert within(np.bincount(g.edge_order[:, 0], minlength=9), 1 / 9)
    assert all(len(set(row)) == 10 for row in g.labels)


def test_reverse_target_is_the_reversed_path():
    spec = ps.parse_spec("pathstar:d=3,l=4,n=12")
    g = ps.sample_graphs(spec, np.random.default_rng(0), 50)
    fwd, rev = ps.encode(spec, g, "ntp"), ps.encode(spec, g, "reverse")
    P = spec.prompt_len
    np.testing.assert_array_equal(fwd[:, :P], rev[:, :P])
    np.testing.assert_array_equal(fwd[:, P:][:, ::-1], rev[:, P:])
    for seq in rev:
        assert decode(spec, seq)[3] == solve(spec, seq[:P])[::-1]


@pytest.mark.parametrize("objective", ps.OBJECTIVES)
def test_mask_covers_exactly_the_path(objective):
    spec = ps.parse_spec("pathstar:d=2,l=5,n=20")
    seq = ps.encode(spec, ps.sample_graphs(spec, np.random.default_rng(0), 40), objective)
    inputs, targets, mask = ps.training_arrays(spec, seq, objective)
    P, l = spec.prompt_len, spec.l
    assert inputs.shape == targets.shape == mask.shape == (40, spec.n_ctx)
    assert set(np.unique(mask)) == {0.0, 1.0} and np.all(mask.sum(axis=1) == l)
    np.testing.assert_array_equal(targets[mask == 1].reshape(40, l), seq[:, P:])    # the path, in order
    np.testing.assert_array_equal(targets, seq[:, 1:])
    if objective == "teacherless":
        assert np.all(inputs[:, P:] == spec.dummy)
        np.testing.assert_array_equal(inputs[:, :P], seq[:, :P])
    else:
        np.testing.assert_array_equal(inputs, seq[:, :-1])
    assert not np.any(targets == spec.dummy)


# ----------------------------------------------------------------------------------------------------------
# stub models: next_logits(tokens (B, T)) -> (B, T, V), built on the independent solver above
def one_hot_logits(spec, choices):  # (B, T) int (-1: no opinion) -> (B, T, V)
    logits = np.zeros(choices.shape + (spec.vocab,))
    b, t = np.nonzero(choices >= 0)
    logits[b, t, choices[b, t]] = 1.0
    return logits


def oracle(spec, objective):
    """Writes the true path (reversed for `reverse`), read from the prompt alone."""
    P = spec.prompt_len

    def next_logits(tokens):
        choices = -np.ones(tokens.shape, dtype=np.int64)
        for b, row in enumerate(tokens):
            path = solve(spec, row[:P])
            path = path[::-1] if objective == "reverse" else path
            for t in range(P - 1, tokens.shape[1]):
                choices[b, t] = path[t - (P - 1)]
        return one_hot_logits(spec, choices)
    return next_logits


def clever_hans(spec, seed):
    """Copies the start, then the child of the node it is fed; out of the centre it picks an arm at random."""
    P, rng = spec.prompt_len, np.random.default_rng(seed)

    def next_logits(tokens):
        choices = -np.ones(tokens.shape, dtype=np.int64)
        for b, row in enumerate(tokens):
            edges, start, _, _ = decode(spec, np.concatenate([row[:P], np.zeros(spec.l, dtype=np.int64)]))
            children = {}
            for u, v in edges:
                children.setdefault(u, []).append(v)
            choices[b, P - 1] = start
            for t in range(P, tokens.shape[1]):
                kids = children.get(int(row[t]), [])
                choices[b, t] = kids[rng.integers(len(kids))] if kids else 0
        return one_hot_logits(spec, choices)
    return next_logits


@pytest.mark.parametrize("objective", ps.OBJECTIVES)
def test_oracle_gets_every_path(objective):
    spec = ps.parse_spec("pathstar:d=3,l=4,n=12")
    g = ps.eval_set(spec, 200, seed=5)
    r = ps.evaluate_paths(oracle(spec, objective), spec, g, objective)
    assert r["exact_match"] == 1.0
    assert all(row["generated_accuracy"] == 1.0 and row["teacher_forced_accuracy"] == 1.0
               for row in r["path_accuracy"])


def test_clever_hans_is_at_chance_on_the_planning_step_only():
    """Generated: position 2 at 1/d (within 4.5 standard errors), and the path right exactly when position 2 is.
    Teacher-forced: 1.0 everywhere except position 2. Both rows are what chance_levels says for ntp."""
    spec = ps.parse_spec("pathstar:d=3,l=4,n=12")
    N = 2000
    r = ps.evaluate_paths(clever_hans(spec, seed=0), spec, ps.eval_set(spec, N, seed=9), "ntp")
    gen = [row["generated_accuracy"] for row in r["path_accuracy"]]
    tf = [row["teacher_forced_accuracy"] for row in r["path_accuracy"]]
    se = math.sqrt((1 / 3) * (2 / 3) / N)
    assert gen[0] == 1.0 and abs(gen[1] - 1 / 3) < 4.5 * se
    assert gen[1] == gen[2] == gen[3] == r["exact_match"]       # a wrong arm is followed to its leaf
    assert tf[0] == tf[2] == tf[3] == 1.0 and abs(tf[1] - 1 / 3) < 4.5 * se
    chance = ps.chance_levels(spec, "ntp")
    assert chance["teacher_forced"] == pytest.approx([1, 1 / 3, 1, 1])
    assert chance["generated"] == pytest.approx([1, 1 / 3, 1 / 3, 1 / 3]) and chance["exact_match"] == 1 / 3


def test_chance_levels_by_objective():
    spec = ps.parse_spec("pathstar:d=4,l=3,n=10")
    assert ps.chance_levels(spec, "reverse")["teacher_forced"] == [1.0, 1.0, 1.0]
    assert ps.chance_levels(spec, "teacherless")["teacher_forced"] == [1.0, 0.25, 0.25]
    assert ps.chance_levels(ps.parse_spec("pathstar:d=4,l=2,n=10"), "ntp")["generated"] == [1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------
# the plan probe
def test_probe_on_features_that_hold_the_path_is_perfect():
    spec = ps.parse_spec("pathstar:d=3,l=4,n=12")
    g = ps.eval_set(spec, 600, seed=2)
    path = ps.plan_targets(spec, g)                                        # (B, l-1)
    features = np.zeros((600, (spec.l - 1) * spec.n))                     # one-hot of every path node
    for j in range(spec.l - 1):
        features[np.arange(600), j * spec.n + path[:, j]] = 1.0
    rows = ps.plan_probe(features, spec, g)
    assert [r["position"] for r in rows] == [2, 3, 4]
    assert all(r["accuracy"] == 1.0 and r["chance"] == pytest.approx(1 / 3) for r in rows)


def test_probe_on_noise_is_at_chance():
    spec = ps.parse_spec("pathstar:d=2,l=5,n=20")
    N = 3000
    g = ps.eval_set(spec, N, seed=4)
    rows = ps.plan_probe(np.random.default_rng(0).standard_normal((N, 8)), spec, g)
    se = math.sqrt(0.25 / (N / 2))                                         # half the graphs are held out
    assert all(abs(r["accuracy"] - 0.5) < 4.5 * se for r in rows)


def test_candidates_hold_the_target_once():
    spec = ps.parse_spec("pathstar:d=3,l=4,n=12")
    g = ps.eval_set(spec, 100, seed=1)
    cands, path = ps.plan_candidates(spec, g), ps.plan_targets(spec, g)
    assert cands.shape == (100, 3, 3)
    assert np.all((cands == path[:, :, None]).sum(axis=2) == 1)
    for b in range(100):                                                   # depth j+1 nodes: j+1 edges from start
        edges, start, _, _ = decode(spec, ps.encode(spec, g)[b])
        parents = {v: u for u, v in edges}
        for j in range(3):
            for c in cands[b, j]:
                x = int(c)
                for _ in range(j + 1):
                    x = parents[x]
                assert x == start


# ----------------------------------------------------------------------------------------------------------
# bad input: one line each
@pytest.mark.parametrize("text,words", [
    ("pathstar:d=1", "d >= 2"), ("pathstar:l=1", "l >= 2"), ("pathstar:d=3,l=4,n=9", "n >= 10"),
    ("pathstar:d=two", "whole number"), ("pathstar:d=2.5", "whole number"), ("pathstar:k=3", "unknown setting"),
    ("pathstar:d=2,d=3", "twice"), ("pathstar:d", "unknown setting"), ("mess3", "not a path-star"),
    (None, "must be a string"), ("pathstar:n=100000", "at most"), ("pathstar:d=40,l=40,n=10000", "tokens"),
])
def test_bad_specs_are_one_line(text, words):
    with pytest.raises(TinyseqError) as e:
        ps.parse_spec(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_spec_defaults_and_label():
    assert ps.parse_spec("pathstar") == ps.PathStar(2, 5, 20) == ps.parse_spec(" PathStar:n=20, d=2 ")
    assert ps.parse_spec("pathstar:d=3,l=4,n=12").label == "pathstar:d=3,l=4,n=12"
    with pytest.raises(TinyseqError, match="unknown path-star objective"):
        ps.check_objective("mtp:2")


# ----------------------------------------------------------------------------------------------------------
# the masked loss: weights per target token
def random_case(seed=0, B=3, T=5, V=7):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, V))
    targets = rng.integers(0, V, (B, T))
    mask = (rng.random((B, T)) < 0.5).astype(np.float64)
    mask[0, 0] = 1.0
    return logits, targets, mask


def test_masked_loss_is_the_mean_over_the_masked_tokens():
    logits, targets, mask = random_case()
    keep = mask == 1
    loss, _ = ops.cross_entropy_forward(logits, targets, weights=mask)
    z = logits[keep]                                                        # (K, V), an independent CE
    expect = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), targets[keep]])
    assert loss == pytest.approx(expect, rel=1e-13)
    ones = np.ones_like(mask)
    assert ops.cross_entropy_forward(logits, targets, weights=ones)[0] == pytest.approx(
        ops.cross_entropy_forward(logits, targets)[0], rel=1e-14)


@pytest.mark.parametrize("backend", [ops, ops_numba], ids=["numpy", "numba"])
def test_masked_loss_normalisation_by_hand(backend):
    """Two tokens, V = 2: logits (0, 0) -> p = (1/2, 1/2); logits (ln 3, 0) -> p = (3/4, 1/4). With the mask
    (1, 0) the loss is the first token's alone, -ln(1/2), and so is its gradient (p - onehot) / 1: dividing
    by the number of tokens (2) instead of the masked ones (1) would halve the step on every masked token."""
    logits = np.array([[[0.0, 0.0], [math.log(3.0), 0.0]]])              # (1, 2, 2)
    targets = np.array([[0, 1]])
    mask = np.array([[1.0, 0.0]])
    loss, probs = backend.cross_entropy_forward(logits, targets, weights=mask)
    assert loss == pytest.approx(math.log(2.0), rel=1e-14)
    np.testing.assert_allclose(backend.cross_entropy_backward(probs, targets, weights=mask),
                               [[[-0.5, 0.5], [0.0, 0.0]]], rtol=0, atol=1e-15)
    both = np.ones_like(mask)                                             # (ln 2 + ln 4) / 2 = 1.5 ln 2
    loss, probs = backend.cross_entropy_forward(logits, targets, weights=both)
    assert loss == pytest.approx(1.5 * math.log(2.0), rel=1e-14)
    np.testing.assert_allclose(backend.cross_entropy_backward(probs, targets, weights=both),
                               [[[-0.25, 0.25], [0.375, -0.375]]], rtol=0, atol=1e-15)


@pytest.mark.parametrize("weights", ["mask", "positive", "ones"])
def test_masked_loss_gradient_by_finite_differences(weights):
    logits, targets, mask = random_case(1)
    w = {"mask": mask, "positive": np.random.default_rng(2).random(mask.shape) + 0.1,
         "ones": np.ones_like(mask)}[weights]
    _, probs = ops.cross_entropy_forward(logits, targets, weights=w)
    analytic = ops.cross_entropy_backward(probs, targets, weights=w)
    numeric = numerical_grad(lambda: ops.cross_entropy_forward(logits, targets, weights=w)[0], logits)
    assert rel_err(analytic, numeric).max() < 1e-6
    assert np.all(analytic[w == 0] == 0)
    if weights == "ones":                                     # the same as the unmasked backward
        np.testing.assert_allclose(analytic, ops.cross_entropy_backward(probs, targets), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_loss_numba_twin_agrees(dtype):
    logits, targets, mask = random_case(3, B=4, T=6, V=9)
    logits = logits.astype(dtype)
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    loss, probs = ops_numba.cross_entropy_forward(logits, targets, weights=mask)
    rloss, rprobs = ops.cross_entropy_forward(logits, targets, weights=mask)
    np.testing.assert_allclose(loss, rloss, **tol)
    np.testing.assert_allclose(ops_numba.cross_entropy_backward(probs, targets, weights=mask),
                               ops.cross_entropy_backward(rprobs, targets, weights=mask), **tol)


def test_masked_model_gradient_by_finite_differences():
    """A float64 transformer on a path-star batch: the masked loss's parameter gradient, every tensor."""
    from tinyseq.models import build_model
    from tinyseq.objectives import model_backward

    spec = ps.parse_spec("pathstar:d=2,l=3,n=5")
    model = build_model("transformer", {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 8,
                                        "n_ctx": spec.n_ctx, "initializer_range": 0.5},
                        vocab=spec.vocab, dtype="float64", backend="numpy")
    inputs, targets, mask = ps.sample_batch(spec, np.random.default_rng(0), 3, "ntp")

    def loss():
        return float(ops.cross_entropy_forward(model.forward(inputs)[0], targets, weights=mask)[0])

    logits, cache = model.forward(inputs)
    _, probs = ops.cross_entropy_forward(logits, targets, weights=mask)
    model.params.zero_grad()
    model_backward(model, ops.cross_entropy_backward(probs, targets, weights=mask), cache)
    rng = np.random.default_rng(1)
    for name in model.params.names():
        x, g = model.params[name], model.params.grads[name]
        idx = rng.choice(x.size, size=min(x.size, 12), replace=False)
        num = numerical_grad(loss, x, idx)
        ok = (rel_err(g.reshape(-1)[idx], num) < 1e-6) | (np.abs(g.reshape(-1)[idx] - num) < 1e-9)
        assert ok.all(), name


def test_bad_loss_weights_are_refused():
    logits, targets, mask = random_case()
    with pytest.raises(TinyseqError, match="not all 0"):
        ops.cross_entropy_forward(logits, targets, weights=np.zeros_like(mask))
    with pytest.raises(TinyseqError, match="one weight per target"):
        ops_numba.cross_entropy_forward(logits, targets, weights=mask[:, :2])


# ----------------------------------------------------------------------------------------------------------
# training through train()'s task interface
def test_training_is_seeded_and_checks_the_model():
    from tinyseq.models import build_model
    from tinyseq.train import TrainConfig, train

    spec = ps.parse_spec("pathstar:d=2,l=3,n=6")
    tiny = {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16, "n_ctx": spec.n_ctx}
    a, b = (build_model("transformer", tiny, vocab=spec.vocab) for _ in range(2))
    config = TrainConfig(steps=5, batch=8, seed=3, objective="teacherless", eval_sequences=20, threads=1)
    losses = []
    train(spec, a, config, callback=lambda ev: losses.append(ev["loss"]) if ev["event"] == "step" else None)
    train(spec, b, config)
    np.testing.assert_array_equal(a.params.data, b.params.data)
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    wrong = build_model("transformer", {**tiny, "n_ctx": spec.n_ctx - 1}, vocab=spec.vocab)
    with pytest.raises(TinyseqError, match=f"n_ctx={spec.n_ctx}"):
        train(spec, wrong, config)


def test_example_script_runs(capsys):
    """examples/pathstar_clever_hans.py end to end with a tiny model and budget (its numbers are not judged)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "pathstar_clever_hans.py")
    spec = importlib.util.spec_from_file_location("example_pathstar", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16}
    results = module.main(spec="pathstar:d=2,l=3,n=6", steps=3, model=tiny, n_eval=60, threads=None)
    text = capsys.readouterr().out
    assert "What it means" in text and "teacher-forced" in text
    assert [r["objective"] for r in results] == ["reverse", "ntp"]
    assert all(len(r["path_accuracy"]) == 3 and {p["k"] for p in r["plan_recovery"]} == {2, 3} for r in results)
