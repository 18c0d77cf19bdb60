"""The shuffle control (tinyseq/shuffle.py, analysis.shuffle_control) on stub "networks" whose answer is known:
activations that ARE the belief (the unseen part is there: R^2 1 before, a large drop after, p = 1/(N+1)),
activations that are only the exact next-token distribution (no drop at all: every shuffled R^2 equals the
real one, p = 1), and a full-rank process (skipped, with the reason). The refit shortcut is checked against
a direct fit on the raw rows, the ceiling against a brute-force sum over groups."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

import tinyseq
from conftest import cli_in_process, safe_beliefs
from tinyseq import analysis as A
from tinyseq import beliefs as B
from tinyseq import probes, report, shuffle
from tinyseq.errors import TinyseqError
from tinyseq.processes import sample

N_PERM = 40


class Stub:
    """The Bayes predictor of context n_ctx; its activations are the belief, the next-token distribution, or
    both (two hooks, so there is a concatenation)."""

    def __init__(self, proc, n_ctx, acts=("belief",)):
        self.proc, self.acts = proc, acts
        self.config = SimpleNamespace(n_ctx=n_ctx, d_vocab=proc.vocab)

    def logits(self, tokens):
        return np.log(np.clip(B.next_token_probs(self.proc, safe_beliefs(self.proc, np.asarray(tokens))), 1e-300, None))

    def activations(self, tokens):
        b = safe_beliefs(self.proc, np.asarray(tokens))
        return {name: b if name == "belief" else B.next_token_probs(self.proc, b) for name in self.acts}


@pytest.fixture(scope="module")
def rrxor():
    return tinyseq.process("rrxor")


def run(proc, acts, permutations=N_PERM):
    return A.analyse(Stub(proc, 6, acts), proc, horizon=2, random_init=None, n_sample=500, permutations=permutations)


@pytest.fixture(scope="module")
def belief_run(rrxor):
    return run(rrxor, ("belief",))


@pytest.fixture(scope="module")
def next_token_run(rrxor):
    return run(rrxor, ("next_token",))


def rows_of(result):
    return {r["hook"]: r for r in result["shuffle_control"]["rows"]}


# ----------------------------------------------------------------------------------------------------------
# the pieces
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_fit_operator_is_fit_affine(ridge):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    X[:, 2] = 3.0                                   # a constant column
    X[:, 5] = 2 * X[:, 0] - X[:, 1]                 # a collinear one
    Y, w = rng.standard_normal((200, 4)), rng.random(200)
    W, b = probes.fit_affine(X, Y, w, ridge)
    Aop, x_mean = probes.affine_fit_operator(X, w, ridge)
    y_mean = (w / w.sum()) @ Y
    W2 = Aop @ (Y - y_mean)
    np.testing.assert_allclose(W2, W, atol=1e-10)
    np.testing.assert_allclose(y_mean - x_mean @ W2, b, atol=1e-10)


@pytest.mark.parametrize("name", ["rrxor", "z1r", "nond", "mess3", "even"])
def test_unseen_basis_is_the_null_space_of_the_next_token_map(name):
    proc = tinyseq.process(name)
    N = B.unseen_basis(proc)
    E = proc.emission
    assert N.shape == (proc.n_states, proc.n_states - np.linalg.matrix_rank(E))
    np.testing.assert_allclose(N.T @ N, np.eye(N.shape[1]), atol=1e-12)
    np.testing.assert_allclose(N.T @ E, 0.0, atol=1e-12)


def sides(proc, seed=0):  # a sampled set of 300 sequences: its beliefs, and (Rows, Side) for fit and held-out
    rng = np.random.default_rng(seed)
    tokens = sample(proc, 300, 6, rng)
    data = SimpleNamespace(tokens=tokens, weights=np.ones(300), vocab=proc.vocab, beliefs=B.belief_states(proc, tokens))
    fit_seq, held_seq = probes.split_sequences(300, 0.3, seed)
    out = []
    for seqs in (fit_seq, held_seq):
        rw = A.Rows(data, seqs, 6)
        out.append((rw, shuffle.Side(rw.inv, len(rw.seqs), rw.raw_w, data.beliefs[rw.raw_seqs, rw.raw_pos],
                                     proc.emission, B.unseen_basis(proc))))
    return data, out


def test_permutations_stay_in_their_group_and_keep_the_next_token(rrxor):
    data, [(rw, side), _] = sides(rrxor)
    rng = np.random.default_rng(1)
    b = data.beliefs[rw.raw_seqs, rw.raw_pos]
    for _ in range(5):
        src = side.permutation(rng)
        assert np.array_equal(np.sort(src), np.arange(len(src)))             # a permutation
        assert np.array_equal(side.groups[src], side.groups)
        P = B.unseen_basis(rrxor) @ B.unseen_basis(rrxor).T
        moved = b - b @ P + b[src] @ P                                       # seen_i + unseen_src[i]
        np.testing.assert_allclose(moved @ rrxor.emission, b @ rrxor.emission, atol=1e-12)
        assert (np.abs(moved - b).max(axis=1) > 1e-6).mean() > 0.1            # and the unseen part did move


def test_shortcut_refit_equals_a_direct_fit_on_the_raw_rows(rrxor):
    data, [(fr, fit), (hr, held)] = sides(rrxor)
    rng = np.random.default_rng(2)
    count = np.cumsum(data.tokens, axis=1)[..., None]                 # features: any function of the prefix
    pos = np.broadcast_to(np.arange(6)[None, :, None], count.shape)
    X = np.concatenate([data.beliefs, count, pos, np.sin(count * pos), data.beliefs[..., :2] ** 3], axis=-1)
    Xf, Xh = X[fr.seqs, fr.pos], X[hr.seqs, hr.pos]
    src_f, src_h = fit.permutation(rng), held.permutation(rng)
    ops = [probes.affine_fit_operator(Xf, fit.wu, 0.0) + (Xh,)]
    fast = shuffle._r2_batch(ops, fit, held, [(src_f, src_h)])[0, 0]
    b_f, b_h = data.beliefs[fr.raw_seqs, fr.raw_pos], data.beliefs[hr.raw_seqs, hr.raw_pos]
    P = B.unseen_basis(rrxor) @ B.unseen_basis(rrxor).T
    Y_f, Y_h = b_f - b_f @ P + b_f[src_f] @ P, b_h - b_h @ P + b_h[src_h] @ P
    W, b = probes.fit_affine(X[fr.raw_seqs, fr.raw_pos], Y_f)                     # every raw row, no merging
    direct = probes.r2_score(Y_h, X[hr.raw_seqs, hr.raw_pos] @ W + b)
    assert fast == pytest.approx(direct, abs=1e-9)


def test_ceiling_is_one_minus_the_within_group_share(rrxor):
    data, [_, (hr, held)] = sides(rrxor)
    b = data.beliefs[hr.raw_seqs, hr.raw_pos]
    q = np.round(b @ rrxor.emission, 9)
    within = 0.0
    for key in {tuple(r) for r in q}:                                             # brute force, group by group
        g = b[(q == key).all(axis=1)]
        within += ((g - g.mean(axis=0)) ** 2).sum()
    total = ((b - b.mean(axis=0)) ** 2).sum()
    assert shuffle.ceiling(held) == pytest.approx(1 - within / total, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------
# the stage on stub networks
def test_belief_activations_drop_to_the_ceiling_with_the_smallest_p(belief_run):
    sc = belief_run["shuffle_control"]
    assert sc["skipped"] is None and sc["next_token_rank"] == 2 and sc["permutations"] == N_PERM
    row = rows_of(belief_run)["belief"]
    assert row["best_hook"] and row["r2"] == pytest.approx(1.0, abs=1e-9)
    assert row["p_value"] == pytest.approx(1 / (N_PERM + 1))
    assert row["drop"] > 0.3
    # no probe can expect more than the ceiling once the unseen part is shuffled
    assert row["shuffled_mean"] <= sc["ceiling"] + 5 * row["shuffled_sd"] / np.sqrt(N_PERM) + 1e-9
    table = next(r for r in belief_run["belief_recovery"] if r["hook"] == "belief" and r["control"] is None)
    assert row["r2"] == pytest.approx(table["r2"], abs=1e-9)                     # the belief table's number


def test_next_token_activations_show_no_drop(next_token_run):
    sc = next_token_run["shuffle_control"]
    assert sc["skipped"] is None
    for row in sc["rows"]:          # the hook and the model's output: both exactly the next-token distribution
        assert max(abs(s - row["r2"]) for s in row["shuffled"]) < 1e-8       # float32 activations: not 1e-15
        assert row["p_value"] == 1.0 and abs(row["drop"]) < 1e-8
    assert rows_of(next_token_run)["next_token"]["r2"] < 0.5                       # it does not hold the belief


@pytest.mark.parametrize("name", ["rrxor", "z1r"])
def test_plain_permutation_would_drop_even_for_the_next_token(name):
    """Why the groups: features that are a function of the next-token distribution alone (here a one-hot code of
    its value, as a hidden layer might compute) keep their R^2 exactly under the within-group shuffle, but with
    every row in one group (an emission that tells no row apart) they lose R^2: the unseen part depends on the
    next-token distribution, and a plain permutation destroys that too."""
    proc = tinyseq.process(name)
    data, [(fr, fit), (hr, held)] = sides(proc)
    plain = [shuffle.Side(rw.inv, len(rw.seqs), rw.raw_w, data.beliefs[rw.raw_seqs, rw.raw_pos],
                          np.zeros_like(proc.emission), B.unseen_basis(proc)) for rw in (fr, hr)]
    q = np.round(B.next_token_probs(proc, data.beliefs)[..., 0], 9)
    values, code = np.unique(q, return_inverse=True)
    F = np.eye(len(values))[code.reshape(q.shape)]                       # (N, T, #values) one-hot of q
    ops = [probes.affine_fit_operator(F[fr.seqs, fr.pos], fit.wu, 0.0) + (F[hr.seqs, hr.pos],)]
    rng = np.random.default_rng(4)
    real = shuffle._r2_batch(ops, fit, held, [(np.arange(len(fr.inv)), np.arange(len(hr.inv)))])[0, 0]
    grouped = shuffle._r2_batch(ops, fit, held, [(fit.permutation(rng), held.permutation(rng)) for _ in range(5)])
    flat = shuffle._r2_batch(ops, *plain, [(plain[0].permutation(rng), plain[1].permutation(rng)) for _ in range(5)])
    np.testing.assert_allclose(grouped, real, atol=1e-9)
    assert flat.max() < real - 0.1


def test_two_hooks_get_a_concatenation_row(rrxor):
    r = run(rrxor, ("next_token", "belief"), permutations=5)
    rows = rows_of(r)
    assert set(rows) == {"belief", "concat", "next_token_output"} and rows["belief"]["best_hook"]
    assert rows["concat"]["p_value"] == pytest.approx(1 / 6)


def test_random_init_rows_are_shuffled_too(rrxor):
    """A 'random-init network' whose one hook is the next-token distribution (paired with the trained 'belief'
    hook by position): its row shows no drop while the trained row's drops, on the same shuffles."""
    init = lambda seed: Stub(rrxor, 6, ("next_token",))  # noqa: E731
    r = A.analyse(Stub(rrxor, 6), rrxor, horizon=2, random_init=init, n_sample=500, permutations=10)
    by = {(x["hook"], x["control"]): x for x in r["shuffle_control"]["rows"]}
    assert set(by) == {("belief", None), ("next_token_output", "model_output"), ("belief", "random_init")}
    trained, before = by[("belief", None)], by[("belief", "random_init")]
    assert trained["p_value"] == pytest.approx(1 / 11) and trained["drop"] > 0.3
    assert before["p_value"] == 1.0 and abs(before["drop"]) < 1e-8
    assert "random init: belief" in report.shuffle_table(r)


def test_cli_probe_runs_the_shuffle_and_rejects_bad_counts(tmp_path):
    from tinyseq.checkpoint import save
    from tinyseq.models import build_model
    proc = tinyseq.process("rrxor")
    model = build_model("transformer", {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_head": 4, "d_mlp": 16,
                                        "n_ctx": 6}, proc.vocab, seed=0)
    path = str(tmp_path / "model.npz")
    save(path, model, process_spec=proc.to_spec(), meta={"process": proc.label})
    r = cli_in_process(["probe", path, "--permutations", "7", "--json", "--threads", "1"])
    assert r.returncode == 0, r.stderr
    sc = json.loads(r.stdout)["shuffle_control"]
    assert sc["permutations"] == 7 and all(len(x["shuffled"]) == 7 for x in sc["rows"])
    assert all(abs(x["p_value"] * 8 - round(x["p_value"] * 8)) < 1e-12 for x in sc["rows"])   # (1 + k) / 8
    for bad in ("0", "-1", "x"):
        r = cli_in_process(["probe", path, "--permutations", bad])
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "--permutations" in lines[0], r.stderr


@pytest.mark.parametrize("kind", ["transformer", "rnn", "gru", "lstm"])
def test_every_architecture_reproduces_the_belief_table(rrxor, kind):
    """Untrained networks of every kind: the shuffle table's real R^2 of each hook's probe is the belief table's
    (the refit shortcut reproduces the fit), and p takes only the values (1 + k) / (1 + N). Tolerance 1e-6: the
    concatenated LayerNorm outputs of an untrained transformer are nearly collinear, and the SVD behind the
    shortcut rounds differently from lstsq (3e-8 here). The output row is left out: an untrained net's two
    output probabilities barely vary and sum to 1, a fit that keeps a rounding-level singular value either way."""
    from tinyseq.models import build_model
    sizes = {"n_ctx": 6, "n_layers": 2, **({"d_model": 8, "n_heads": 1, "d_head": 4, "d_mlp": 16}
                                         if kind == "transformer" else {"hidden": 8})}
    r = A.analyse(build_model(kind, sizes, rrxor.vocab, seed=0), rrxor, horizon=2, n_sample=500, permutations=5)
    table = {(x["hook"], x["control"]): x["r2"] for x in r["belief_recovery"]}
    rows = r["shuffle_control"]["rows"]
    assert [x["control"] for x in rows] == [None, None, "model_output", "random_init", "random_init"]
    for x in rows:
        if x["control"] != "model_output":
            assert x["r2"] == pytest.approx(table[(x["hook"], x["control"])], abs=1e-6)
        assert x["p_value"] * 6 == pytest.approx(round(x["p_value"] * 6), abs=1e-12) and len(x["shuffled"]) == 5


def test_demo_runs_the_shuffle_only_when_asked(tmp_path):
    tiny = ["--d-model", "8", "--n-layers", "1", "--n-heads", "1", "--d-head", "4", "--d-mlp", "16", "--n-ctx", "5"]
    base = ["demo", "--process", "rrxor", "--time", "1", "--no-live", "--threads", "1", *tiny]
    r = cli_in_process([*base, "--out", str(tmp_path / "a"), "--shuffle"])
    assert r.returncode == 0, r.stderr
    assert "by shuffling" in r.stdout and "random init: " in r.stdout
    r = cli_in_process([*base, "--out", str(tmp_path / "b"), "--json"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["shuffle_control"] is None and "shuffle_control" not in d["timings"]


def test_full_rank_process_is_skipped_with_a_reason():
    mess3 = tinyseq.process("mess3")
    r = A.analyse(Stub(mess3, 4), mess3, horizon=2, random_init=None, permutations=10)
    sc = r["shuffle_control"]
    assert "full rank" in sc["skipped"] and sc["next_token_rank"] == sc["states"] == 3 and "rows" not in sc
    text = report.shuffle_table(r)
    assert "skipped" in text and "full rank" in text and len(text.splitlines()) == 1 and len(text) <= 80


def test_nothing_to_permute_is_skipped_with_a_reason():
    """nond's next-token map has rank 2 < 3, but on these sequences its beliefs lie on a line that the
    next-token distribution parametrises: no two rows share it with different unseen parts."""
    nond = tinyseq.process("nond")
    r = A.analyse(Stub(nond, 6), nond, horizon=2, random_init=None, n_sample=300, permutations=5)
    sc = r["shuffle_control"]
    assert sc["next_token_rank"] == 2 and sc["movable_share"] == 0.0 and "follows from" in sc["skipped"]
    assert len(report.shuffle_table(r).splitlines()) == 1


def test_json_and_report(belief_run):
    said = json.loads(json.dumps(report.describe(belief_run), allow_nan=False))
    assert said["shuffle_control"]["rows"][0]["hook"] == "belief"
    assert "shuffle_control" in said["timings"]
    text = report.probe_report(belief_run)
    assert "unseen part" in text and f"{1 / (N_PERM + 1):.3f}" in text


def test_off_by_default_and_bad_counts_are_errors(rrxor):
    r = A.analyse(Stub(rrxor, 6), rrxor, horizon=2, random_init=None, n_sample=500)
    assert r["shuffle_control"] is None and "shuffle_control" not in r["timings"]
    assert report.shuffle_table(r) == ""
    for bad in (0, -3, 2.5, True):
        with pytest.raises(TinyseqError, match="permutations"):
            A.analyse(Stub(rrxor, 6), rrxor, horizon=2, random_init=None, permutations=bad)
