"""Path-star behind train()'s task interface and the commands: batches with loss weights per head, the masked
multi-head loss against a by-hand computation, checkpoints that regenerate their evaluation graphs, the
probe's JSON keys, and every mismatched option refused in one line before anything is written."""
import json
import os

import numpy as np
import pytest

from tests.conftest import cli_in_process
from tinyseq import pathstar as ps
from tinyseq.errors import TinyseqError
from tinyseq.models import build_model
from tinyseq.nn import ops
from tinyseq.objectives import Objective, batch_forward, objective_backward

SPEC = "pathstar:d=2,l=3,n=6"
TINY = ["--n-layers", "1", "--d-model", "8", "--n-heads", "1", "--d-head", "8", "--d-mlp", "16"]


def sample(spec, B=5, seed=0, variant="ntp"):
    return ps.encode(spec, ps.sample_graphs(spec, np.random.default_rng(seed), B), variant)


# ----------------------------------------------------------------------------------------------------------
# batches and the masked multi-head loss
@pytest.mark.parametrize("variant", ["ntp", "reverse", "teacherless"])
def test_path_batch_targets_and_weights_per_head(variant):
    spec = ps.parse_spec("pathstar:d=3,l=4,n=12")
    seq = sample(spec, variant=variant)
    P, L, T = spec.prompt_len, spec.seq_len, spec.n_ctx
    batch = ps.path_batch(spec, seq, variant, heads=3)
    inputs, _, mask = ps.training_arrays(spec, seq, variant)
    np.testing.assert_array_equal(batch.inputs, inputs)
    np.testing.assert_array_equal(batch.weights[0], mask)
    for i in range(1, 4):                           # head i at input position t reads sequence token t + i
        w, tg = batch.weights[i - 1], batch.targets[i - 1]
        for t in range(T):
            counted = P <= t + i <= L - 1           # a path token, inside the sequence
            assert (w[:, t] == (1.0 if counted else 0.0)).all(), (i, t)
            if counted:
                np.testing.assert_array_equal(tg[:, t], seq[:, t + i])
    if variant == "teacherless":
        assert (batch.inputs[:, P:] == spec.dummy).all()


def test_masked_multi_head_loss_by_hand():
    """batch_forward's loss is sum_i w_i (sum_n u_n CE_n / sum_n u_n), computed here from the logits directly."""
    spec = ps.parse_spec(SPEC)
    model = build_model("transformer", {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16,
                                        "n_ctx": spec.n_ctx, "n_future": 2}, vocab=spec.vocab, dtype="float64",
                        backend="numpy")
    batch = ps.path_batch(spec, sample(spec, B=4), "ntp", heads=2)
    obj = Objective(heads=2, weights=(1.0, 0.5))
    total, losses, _ = batch_forward(model, batch, obj, model.ops)
    logits, cache = model.forward(batch.inputs)
    for lg, tg, u, got in zip([logits] + model.mtp_logits(cache), batch.targets, batch.weights, losses):
        z = lg - lg.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        ce = -np.take_along_axis(logp, tg[..., None], -1)[..., 0]
        assert got == pytest.approx(float((u * ce).sum() / u.sum()), rel=1e-12)
    assert total == pytest.approx(losses[0] + 0.5 * losses[1], rel=1e-12)


def test_masked_multi_head_gradient_by_finite_differences():
    spec = ps.parse_spec(SPEC)
    model = build_model("transformer", {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16,
                                        "n_ctx": spec.n_ctx, "n_future": 2}, vocab=spec.vocab, dtype="float64",
                        backend="numpy", seed=1)
    batch = ps.path_batch(spec, sample(spec, B=3, seed=2), "teacherless", heads=2)
    obj = Objective(heads=2, weights=(1.0, 0.7))
    P = model.params
    _, _, saved = batch_forward(model, batch, obj, model.ops)
    P.zero_grad()
    objective_backward(model, saved, obj, model.ops)
    rng = np.random.default_rng(0)
    for i in rng.choice(P.size, 12, replace=False):
        old = P.data[i]
        P.data[i] = old + 1e-6
        up = batch_forward(model, batch, obj, model.ops)[0]
        P.data[i] = old - 1e-6
        down = batch_forward(model, batch, obj, model.ops)[0]
        P.data[i] = old
        assert P.grad[i] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------
# the commands
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ps") / "run")
    r = cli_in_process(["train", "--process", SPEC, "--objective", "reverse", "--steps", "12", "--batch", "16",
                        "--eval-every", "6", "--eval-sequences", "40", "--eval-seed", "7", "--threads", "1",
                        "--out", out, *TINY])
    assert r.returncode == 0, r.stderr
    return out, r


def test_train_prints_paths_and_saves_the_task(trained):
    out, r = trained
    assert "exact match" in r.stdout and "teacher-forced" in r.stdout and "eval step 6:" in r.stderr
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["paths"]["n_graphs"] == 40 and summary["train"]["schedule"] == "constant"
    from tinyseq.checkpoint import load

    ckpt = load(os.path.join(out, "model.npz"))
    assert ckpt.process_spec == {"task": "pathstar", "d": 2, "l": 3, "n": 6}
    assert ckpt.meta["train"]["eval_seed"] == 7 and ckpt.meta["objective"]["objective"] == "reverse"


def _regenerate(spec_dict, n, seed):
    """The evaluation graphs from the README's sampling order alone (not tinyseq.pathstar): labels, edge order,
    goal arm, then the layout u v , ... | start goal = path."""
    d, l, n_labels = spec_dict["d"], spec_dict["l"], spec_dict["n"]
    rng = np.random.default_rng(seed)
    E = d * (l - 1)
    labels = rng.random((n, n_labels)).argsort(axis=1)[:, :E + 1]
    order = rng.random((n, E)).argsort(axis=1)
    arm = rng.integers(0, d, size=n)
    seqs = []
    for b in range(n):
        toks = []
        for e in order[b]:
            parent = 0 if e % (l - 1) == 0 else e
            toks += [labels[b, parent], labels[b, e + 1], n_labels]
        path = [labels[b, 0]] + [labels[b, 1 + arm[b] * (l - 1) + k] for k in range(l - 1)]
        seqs.append(toks + [n_labels + 1, path[0], path[-1], n_labels + 2] + path)
    return np.array(seqs)


def test_probe_json_keys_and_graphs_regenerated_from_the_checkpoint(trained):
    import tinyseq

    out, _ = trained
    r = cli_in_process(["probe", out, "--json", "--threads", "1"])
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    assert len(a["path_accuracy"]) == 3 and a["path_accuracy"][0]["position"] == 1
    assert set(a["path_accuracy"][0]) >= {"position", "generated_accuracy", "teacher_forced_accuracy", "chance"}
    assert {"hook", "target", "k", "accuracy", "chance", "random_init_accuracy"} <= set(a["plan_recovery"][0])
    assert a["n_graphs"] == 2000 and a["objective"] == "reverse" and a["eval_seed"] == 7
    model = tinyseq.load(os.path.join(out, "model.npz"))
    seq = _regenerate(model.process.to_spec(), 2000, model.meta["train"]["eval_seed"])
    np.testing.assert_array_equal(seq[:, :-3], ps.encode(model.process, ps.eval_set(model.process, 2000, 7),
                                                         "ntp")[:, :-3])
    rev = np.concatenate([seq[:, :-3], seq[:, -3:][:, ::-1]], axis=1)      # reverse writes the path goal -> start
    gen = ps.generate(model.logits, model.process, rev, "reverse")
    assert a["exact_match"] == pytest.approx(float((gen == rev[:, -3:]).all(axis=1).mean()))


def test_process_show_prints_layout_and_chance():
    r = cli_in_process(["process", "show", "pathstar:d=3,l=4,n=12", "--json"])
    f = json.loads(r.stdout)
    assert f["n_ctx"] == 3 * 9 + 4 + 4 - 1 and f["vocab"] == 16
    assert f["chance"]["ntp"]["teacher_forced"] == [1.0, pytest.approx(1 / 3), 1.0, 1.0]
    text = cli_in_process(["process", "show", "pathstar"]).stdout
    assert "teacherless dummy" in text and "n_ctx = 32" in text


@pytest.mark.parametrize("args, words", [
    (["train", "--process", "mess3", "--objective", "reverse"], "path-star"),
    (["train", "--process", "mess3", "--objective", "teacherless"], "path-star"),
    (["train", "--process", SPEC, "--n-ctx", "10"], "n_ctx=18"),
    (["train", "--process", SPEC, "--preset", "paper"], "drop --preset"),
    (["train", "--process", "pathstar:d=1"], "d >= 2"),
    (["train", "--process", "pathstar:d=2,l=5,n=8"], "n >= 9"),
    (["train", "--process", SPEC, "--live"], "--live applies to hidden Markov"),
    (["process", "show", SPEC, "--depth", "3"], "--depth applies to hidden Markov"),
    (["demo", "--process", SPEC, "--eval-set", "sample"], "--eval-set applies to hidden Markov"),
    (["compare", "--process", "mess3", "--grid", "transformer:reverse"], "path-star"),
])
def test_mismatched_options_are_one_line_and_write_nothing(tmp_path, args, words):
    out = tmp_path / "run"
    extra = ["--out", str(out)] if args[0] in ("train", "demo", "compare") else []
    r = cli_in_process(args + extra, cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_probe_refuses_belief_options(trained):
    out, _ = trained
    for flag, value in (("--weighting", "uniform"), ("--horizon", "2"), ("--eval-set", "sample")):
        r = cli_in_process(["probe", out, flag, value])
        assert r.returncode == 2 and "applies to hidden Markov processes" in r.stderr


def test_resume_compares_the_task():
    from tinyseq.processes import parse_process
    from tinyseq.runs import same_process

    a, b = parse_process(SPEC), parse_process("pathstar:d=2,l=3,n=7")
    assert same_process(a, parse_process(SPEC)) and not same_process(a, b)
    assert same_process(parse_process("mess3"), parse_process("mess3:x=0.05"))     # same T, other name


# ----------------------------------------------------------------------------------------------------------
# compare on a path-star task
def test_compare_grid_on_pathstar_runs_and_tabulates():
    from tinyseq.lab import compare

    tiny = {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16}
    proc = ps.parse_spec(SPEC)
    assert compare.default_grid(proc) == compare.PATH_GRID and compare.default_steps(proc) == ps.TRAIN["steps"]
    result = compare.run_grid(proc, compare.parse_grid("transformer:ntp,transformer:teacherless"), seeds=2,
                              steps=3, workers=1, model_overrides={"transformer": tiny},
                              train_overrides={"batch": 8, "eval_sequences": 10})
    assert result["status"] == "finished" and result["n_finished"] == 4
    row = result["rows"][1]
    assert row["variant"] == "transformer:teacherless" and row["exact_match"]["n"] == 2
    text = compare.format_table(result)
    assert "(chance, ntp)" in text and "plan probe" in text and result["sentence"].startswith("On pathstar")
    assert "(transformer: n_layers 1, d_model 8, n_heads 1, d_head 8, d_mlp 16)" in " ".join(text.split())


def _row(variant, exact, plan, chance=0.5, later=1.0):
    ms = lambda v: {"mean": v, "spread": 0.01, "n": 3}          # noqa: E731
    return {"variant": variant, "seeds": [0, 1, 2], "exact_match": ms(exact), "plan_generated": ms(plan),
            "plan_chance": {"generated": chance, "teacher_forced": chance}, "later_teacher_forced": ms(later)}


def test_compare_sentence_from_the_numbers():
    from tinyseq.lab.compare_paths import summary_sentence

    result = {"process": SPEC, "n_graphs": 2000, "budget": {"steps": 100}, "rows": [
        _row("transformer:reverse", 0.99, 0.99, chance=1.0), _row("transformer:ntp", 0.49, 0.49),
        _row("gru:ntp", 0.2, 0.3), _row("gru:reverse", 0.0, 0.17, chance=1.0, later=0.18)]}
    text = summary_sentence(result)
    assert "reach the paths (exact match >= 0.95): transformer:reverse" in text
    assert "stay at chance on the planning step when generating: transformer:ntp" in text
    assert "have not learned the edge lookups in 100 steps" in text and "gru:reverse (0.180" in text
    assert "in between: gru:ntp" in text
