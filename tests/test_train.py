"""Training: AdamW (NumPy reference, Numba twin, a hand-computed step), the schedule, a short run that learns,
bitwise determinism and resume, NaN handling, and the `train` command's one-line errors."""
import json
import math
import os
import signal

import numpy as np
import pytest

from conftest import cli_in_process
from tinyseq import checkpoint
from tinyseq.errors import TinyseqError
from tinyseq.models import build_model
from tinyseq.processes import parse_process
from tinyseq.optim import adamw_step, adamw_step_numba, clip_grad_norm, lr_at
from tinyseq.train import TrainConfig, TrainingDiverged, load_run, train

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "n_ctx": 4}


def tiny_config(**kw):
    base = dict(steps=40, batch=32, lr=1e-2, warmup=5, eval_every=0, eval_sequences=256, seed=1)
    return TrainConfig(**{**base, **kw})


def tiny_model(kind="transformer", seed=1, dtype="float32"):
    overrides = TINY if kind == "transformer" else {"hidden": 12, "n_ctx": 4}
    return build_model(kind, overrides, vocab=3, dtype=dtype, seed=seed, backend="numba")


@pytest.fixture(scope="module")
def mess3():
    return parse_process("mess3")


def tensors(path):
    return {k: v.copy() for k, v in checkpoint.load(path).tensors.items()}


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


# ----------------------------------------------------------------------------------------------------------
# AdamW
def test_adamw_matches_a_hand_computed_step():
    p, g = np.array([1.0, -2.0]), np.array([0.5, 0.1])
    m, v = np.array([0.1, 0.0]), np.array([0.01, 0.0])
    lr, b1, b2, eps, wd, t = 0.1, 0.9, 0.99, 1e-8, 0.01, 2
    expected = []
    for i in range(2):
        mi = b1 * m[i] + (1 - b1) * g[i]
        vi = b2 * v[i] + (1 - b2) * g[i] ** 2
        mhat, vhat = mi / (1 - b1 ** t), vi / (1 - b2 ** t)
        expected.append(p[i] * (1 - lr * wd) - lr * mhat / (math.sqrt(vhat) + eps))
    adamw_step(p, g, m, v, t, lr, b1, b2, eps, wd)
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    np.testing.assert_allclose(m, [0.9 * 0.1 + 0.1 * 0.5, 0.1 * 0.1], rtol=1e-12)


def test_first_adam_step_moves_every_weight_by_lr():
    # with bias correction, step 1 is lr * sign(g) (up to eps), whatever the gradient's size
    p = np.zeros(4)
    g = np.array([1e-3, -5.0, 2.0, -1e-2])
    adamw_step(p, g, np.zeros(4), np.zeros(4), 1, 0.01, 0.9, 0.999, 1e-12, 0.0)
    np.testing.assert_allclose(p, -0.01 * np.sign(g), rtol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("size", [1, 7, 1000])
def test_adamw_numba_matches_numpy(dtype, tol, size):
    rng = np.random.default_rng(size)
    p0 = rng.standard_normal(size).astype(dtype)
    bufs = [[p0.copy(), np.zeros(size, dtype), np.zeros(size, dtype)] for _ in range(2)]
    for t in range(1, 6):
        g = rng.standard_normal(size).astype(dtype)
        for fn, (p, m, v) in zip((adamw_step, adamw_step_numba), bufs):
            fn(p, g, m, v, t, 3e-3, 0.9, 0.999, 1e-8, 0.1)
    for a, b in zip(*bufs):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_clip_grad_norm():
    g = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.linalg.norm(g), 1.0, rtol=1e-5)
    g = np.array([0.3, 0.4])
    clip_grad_norm(g, 1.0)
    np.testing.assert_array_equal(g, [0.3, 0.4])          # under the limit: untouched
    g = np.array([3.0, 4.0])
    clip_grad_norm(g, 0.0)
    np.testing.assert_array_equal(g, [3.0, 4.0])          # 0: no clipping
    assert math.isnan(clip_grad_norm(np.array([np.nan, 1.0]), 1.0))
    with np.errstate(invalid="ignore"):                   # inf * 0 while scaling (train() ignores it too)
        assert clip_grad_norm(np.array([np.inf, 1.0], np.float32), 1.0) == math.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_is_the_float64_norm(dtype):
    # the Numba pass against NumPy's norm of the gradient cast to float64 (an independent computation)
    g = (np.random.default_rng(3).standard_normal(143_075) * 0.01).astype(dtype)
    expected = float(np.linalg.norm(g.astype(np.float64)))
    scaled = g.copy()
    assert clip_grad_norm(scaled, 0.5) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(scaled, g * (0.5 / (expected + 1e-6)), rtol=1e-6 if dtype == np.float32 else 1e-12)


# ----------------------------------------------------------------------------------------------------------
# schedule
def test_schedule_warmup_then_cosine_to_zero():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=100)
    lrs = [lr_at(cfg, s, s / 100) for s in range(100)]
    np.testing.assert_allclose(lrs[:3], [0.1 * 0.5 * (1 + math.cos(math.pi * s / 100)) * (s + 1) for s in range(3)])
    assert np.argmax(lrs) == 9                             # peak right after warmup
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then only down
    assert lrs[-1] < 1e-3 and lr_at(cfg, 100, 1.0) == 0.0  # reaches zero exactly at the budget
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.5)
    # a time budget: progress is elapsed / budget, so the rate is zero at the deadline
    timed = TrainConfig(lr=1.0, warmup=0, time=30.0)
    assert lr_at(timed, 10_000, 15.0 / 30.0) == pytest.approx(0.5)
    assert lr_at(timed, 10_000, 30.0 / 30.0) == 0.0
    const = TrainConfig(lr=1.0, warmup=4, schedule="constant", steps=10)
    assert [lr_at(const, s, s / 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_budgets():
    assert TrainConfig().total_steps(10) == 300
    assert TrainConfig(tokens=10_000, batch=32).total_steps(10) == 32
    assert TrainConfig(time=5.0).total_steps(10) is None
    with pytest.raises(TinyseqError, match="one budget"):
        TrainConfig(steps=5, time=3.0).validate()
    for bad in (dict(lr=0.0), dict(lr=float("nan")), dict(batch=0), dict(steps=-1), dict(schedule="linear"),
                dict(betas=(0.9, 1.5)), dict(dtype="float16")):
        with pytest.raises(TinyseqError):
            TrainConfig(**bad).validate()


# ----------------------------------------------------------------------------------------------------------
# training runs
def test_short_run_learns_and_writes_outputs(tmp_path, mess3):
    events = []
    model = tiny_model()
    summary = train(mess3, model, tiny_config(steps=60, eval_every=30), out=str(tmp_path), callback=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 60 and kinds.count("eval") == 2
    evals = [e for e in events if e["event"] == "eval"]
    first_loss = next(e for e in events if e["event"] == "step")["loss"]
    assert summary["status"] == "finished" and summary["steps"] == 60
    assert summary["loss"]["mean_nats"] < first_loss - 0.1          # it learned (from about ln 3 = 1.10)
    assert evals[-1]["gap_nats"] < 0.1
    assert len(summary["loss"]["per_position"]) == 4 and summary["loss"]["floor_exact"]
    np.testing.assert_allclose(summary["loss"]["floor_nats"], np.mean([0.8577, 0.8134, 0.7981, 0.7947]), atol=1e-4)
    on_disk = json.load(open(tmp_path / "summary.json"))
    assert on_disk["steps"] == 60 and on_disk["checkpoint"] == str(tmp_path / "model.npz")
    loaded = checkpoint.load_model(str(tmp_path / "model.npz"))
    assert loaded.meta["state"]["finished"] and loaded.meta["state"]["step"] == 60
    proc, model, config, state = load_run(str(tmp_path / "model.npz"))
    with pytest.raises(TinyseqError, match="already finished"):
        train(proc, model, config, out=str(tmp_path), state=state)


def test_same_seed_same_bits_and_resume_is_exact(tmp_path, mess3):
    cfg = tiny_config(steps=30, eval_every=10)
    for name in ("a", "b"):
        train(mess3, tiny_model(), cfg, out=str(tmp_path / name))
    full = tensors(tmp_path / "a" / "model.npz")
    assert_same_tensors(full, tensors(tmp_path / "b" / "model.npz"))
    train(mess3, tiny_model(), tiny_config(steps=30, seed=2), out=str(tmp_path / "c"))
    assert full["unembed.W_U"].tobytes() != tensors(tmp_path / "c" / "model.npz")["unembed.W_U"].tobytes()

    # interrupted at step 15 (Ctrl-C raised by the callback), then resumed: the same final bytes
    def stop_at_15(ev):
        if ev["event"] == "step" and ev["step"] == 15:
            raise KeyboardInterrupt
    half = train(mess3, tiny_model(), cfg, out=str(tmp_path / "r"), callback=stop_at_15)
    assert half["status"] == "interrupted" and half["steps"] == 15
    proc, model, config, state = load_run(str(tmp_path / "r" / "model.npz"))
    assert state.step == 15 and not state.finished
    done = train(proc, model, config, out=str(tmp_path / "r"), state=state)
    assert done["status"] == "finished" and done["steps"] == 30
    assert_same_tensors(full, tensors(tmp_path / "r" / "model.npz"))
    a, b = checkpoint.load(tmp_path / "a" / "model.npz"), checkpoint.load(tmp_path / "r" / "model.npz")
    assert a.adam_m.tobytes() == b.adam_m.tobytes() and a.adam_v.tobytes() == b.adam_v.tobytes()


def test_sigint_stops_after_the_step_and_saves(tmp_path, mess3):
    def ctrl_c_at_7(ev):
        if ev["event"] == "step" and ev["step"] == 7:
            os.kill(os.getpid(), signal.SIGINT)       # a real Ctrl-C: the handler only sets a flag
    before = signal.getsignal(signal.SIGINT)          # default_int_handler, or SIG_IGN under a background job
    summary = train(mess3, tiny_model(), tiny_config(steps=20), out=str(tmp_path), callback=ctrl_c_at_7)
    assert summary["status"] == "interrupted" and summary["steps"] == 7
    assert checkpoint.load(tmp_path / "model.npz").meta["state"]["step"] == 7
    assert signal.getsignal(signal.SIGINT) is before   # restored


def test_recurrent_run_and_resume(tmp_path, mess3):
    cfg = tiny_config(steps=12)
    train(mess3, tiny_model("gru"), cfg, out=str(tmp_path / "a"))

    def stop(ev):
        if ev["event"] == "step" and ev["step"] == 5:
            raise KeyboardInterrupt
    train(mess3, tiny_model("gru"), cfg, out=str(tmp_path / "r"), callback=stop)
    proc, model, config, state = load_run(str(tmp_path / "r" / "model.npz"))
    train(proc, model, config, out=str(tmp_path / "r"), state=state)
    assert_same_tensors(tensors(tmp_path / "a" / "model.npz"), tensors(tmp_path / "r" / "model.npz"))


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, mess3):
    model = tiny_model()
    forward = model.forward
    calls = {"n": 0}

    def poisoned(tokens, x0=None):                    # step 15's forward returns NaN logits
        calls["n"] += 1
        logits, cache = forward(tokens, x0)
        if calls["n"] == 15:
            logits = logits * np.nan
        return logits, cache
    model.forward = poisoned
    with pytest.raises(TrainingDiverged) as e:
        train(mess3, model, tiny_config(steps=40, checkpoint_every=10), out=str(tmp_path))
    msg = str(e.value)
    assert "step 15" in msg and "(step 10)" in msg and "model.npz" in msg and "\n" not in msg
    kept = checkpoint.load(tmp_path / "model.npz")    # loads: every tensor finite
    assert kept.meta["state"]["step"] == 10


def test_huge_lr_diverges_cleanly(tmp_path, mess3):
    with pytest.raises(TrainingDiverged, match="became"):
        train(mess3, tiny_model(), tiny_config(steps=60, lr=1e30, clip=0.0, warmup=0), out=str(tmp_path))


def test_time_budget(mess3):
    summary = train(mess3, tiny_model(), tiny_config(steps=None, time=1.0))
    assert summary["status"] == "finished" and summary["steps"] > 0
    assert 1.0 <= summary["seconds"] < 5.0


# ----------------------------------------------------------------------------------------------------------
# the command line
TINY_FLAGS = ["--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--d-head", "8", "--d-mlp", "32",
              "--n-ctx", "4", "--batch", "32", "--eval-sequences", "256", "--warmup", "5"]


def test_cli_train_json_and_resume_errors(tmp_path):
    out = str(tmp_path / "run")
    code, stdout, err = cli_in_process(["train", "--process", "mess3", "--out", out, "--steps", "20", "--json",
                                        "--lr", "0.01", *TINY_FLAGS])
    assert code == 0, err
    summary = json.loads(stdout)
    for key in ("mean_nats", "floor_nats", "gap_nats", "gap_percent"):
        assert isinstance(summary["loss"][key], float)
    assert summary["steps"] == 20 and summary["tokens"] == 20 * 32 * 4 and summary["tokens_per_s"] > 0
    assert summary["checkpoint"] == os.path.join(out, "model.npz") and os.path.exists(summary["checkpoint"])
    assert "eval step 20" in err                       # not a TTY: plain progress lines on stderr
    # a finished run cannot be resumed, nor silently overwritten
    for args, words in ((["--resume", out], "already finished"),
                        (["--process", "mess3", "--out", out, *TINY_FLAGS], "--overwrite")):
        code, stdout, err = cli_in_process(["train", *args])
        assert code == 2 and err.count("\n") == 1 and words in err, err


def test_cli_text_output_and_resume(tmp_path):
    out = str(tmp_path / "run")
    code, stdout, err = cli_in_process(["train", "--process", "mess3", "--model", "gru", "--hidden", "8",
                                        "--n-ctx", "4", "--steps", "10", "--batch", "16", "--eval-sequences", "128",
                                        "--out", out])
    assert code == 0, err
    assert "floor h(L)" in stdout and "checkpoint:" in stdout and "% of the floor" in stdout
    # make it look interrupted, then resume with a conflicting option and with none
    path = os.path.join(out, "model.npz")
    proc, model, config, state = load_run(path)
    from tinyseq.train import save_run
    state.finished, state.step = False, 5
    save_run(path, model, proc, config, state)
    code, _, err = cli_in_process(["train", "--resume", out, "--lr", "0.5"])
    assert code == 2 and "drop --lr" in err and err.count("\n") == 1
    code, _, err = cli_in_process(["train", "--resume", out, "--hidden", "9"])
    assert code == 2 and "drop --hidden" in err
    code, stdout, err = cli_in_process(["train", "--resume", out, "--json"])
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 10


@pytest.mark.parametrize("args,words", [
    (["--lr", "0"], "lr must be a number > 0"),
    (["--lr", "nan"], "lr must be"),
    (["--batch", "0"], "batch must be"),
    (["--d-model", "0"], "d_model must be a positive integer"),
    (["--hidden", "8"], "--hidden applies to --model rnn/gru/lstm"),
    (["--model", "gru", "--d-mlp", "8"], "--d-mlp applies to --model transformer"),
    (["--steps", "5", "--time", "3"], "one budget"),
    (["--model", "mamba"], "mamba"),
    (["--model", "gru", "--preset", "paper"], "--preset paper"),
    (["--schedule", "linear"], "unknown schedule"),
    (["--act-fn", "tanh"], "unknown act_fn"),
])
def test_cli_bad_options_one_line_exit_2(tmp_path, args, words):
    code, stdout, err = cli_in_process(["train", "--process", "mess3", "--out", str(tmp_path / "o"), *args])
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and words in err, err
    assert not os.path.exists(tmp_path / "o" / "model.npz")


def test_cli_bad_out_and_missing_process(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli_in_process(["train", "--process", "mess3", "--out", str(blocker)])
    assert code == 2 and "is a file" in err
    code, _, err = cli_in_process(["train", "--out", str(tmp_path / "o")])
    assert code == 2 and "--process is required" in err
    code, _, err = cli_in_process(["train", "--resume", str(tmp_path / "nothing")])
    assert code == 2 and "no checkpoint" in err and err.count("\n") == 1


def _paper_preset_summary(process, out):  # one step of `train --preset paper` with an explicit batch -> summary
    code, stdout, err = cli_in_process(["train", "--process", process, "--preset", "paper", "--steps", "1",
                                        "--batch", "4", "--eval-sequences", "16", "--out", str(out), "--json"])
    assert code == 0, err
    return json.loads(stdout)


def test_cli_preset_paper(tmp_path):
    summary = _paper_preset_summary("mess3", tmp_path / "p")
    m = summary["model"]
    assert (m["n_layers"], m["d_model"], m["n_heads"], m["d_head"], m["d_mlp"], m["n_ctx"]) == (4, 64, 1, 8, 256, 10)
    assert summary["train"]["lr"] == 3e-3 and summary["train"]["batch"] == 4   # preset lr, explicit batch
    assert summary["train"]["warmup"] == 50 and summary["train"]["betas"] == [0.9, 0.999]   # mess3: defaults


def test_cli_preset_paper_rrxor_has_its_own_optimiser_settings(tmp_path):
    # the published rrxor model (ANCHORS.md: 4 layers, d_model 128, 4 heads of 16, d_mlp 512, context 10) with
    # the settings chosen for a 40 s budget (BENCHMARKS.md); an explicit option still wins over the preset
    summary = _paper_preset_summary("rrxor", tmp_path / "p")
    m = summary["model"]
    assert (m["n_layers"], m["d_model"], m["n_heads"], m["d_head"], m["d_mlp"], m["n_ctx"]) == (4, 128, 4, 16, 512, 10)
    t = summary["train"]
    assert (t["lr"], t["warmup"], t["schedule"], t["batch"], t["betas"]) == (1e-3, 250, "cosine", 4, [0.9, 0.95])
    code, stdout, err = cli_in_process(["train", "--process", "rrxor", "--preset", "paper", "--steps", "1",
                                        "--batch", "4", "--warmup", "7", "--eval-sequences", "16",
                                        "--out", str(tmp_path / "q"), "--json"])
    assert code == 0, err
    assert json.loads(stdout)["train"]["warmup"] == 7


def test_evaluate_through_the_prefix_tree_equals_the_plain_forward(monkeypatch):
    # float64: the prefix tree (mess3, n_ctx 8 shares most prefixes) and the plain forward give the same evaluation
    from tinyseq import train as train_module
    from tinyseq.nn.transformer import Transformer, TransformerConfig

    proc = parse_process("mess3")
    model = Transformer(TransformerConfig(n_ctx=8, n_layers=2), dtype=np.float64)
    model.params.data[...] += np.random.default_rng(5).standard_normal(model.params.size) * 0.1
    ev = train_module.make_eval_set(proc, 8, 3000, seed=1)
    calls = []
    monkeypatch.setattr(model, "prefix_tree_logits",
                        lambda x: calls.append(len(x)) or Transformer.prefix_tree_logits(model, x))
    via_tree = train_module.evaluate(model, ev)
    assert calls == [3000]                                  # one pass: 3000 <= EVAL_CHUNK * n_ctx sequences
    monkeypatch.setattr(train_module, "TREE_MAX_SHARE", 0.0)  # no sharing is enough: the plain forward
    plain = train_module.evaluate(model, ev)
    assert calls == [3000]
    for key in ("mean_nats", "gap_nats", "sampled_nats"):
        assert via_tree[key] == pytest.approx(plain[key], rel=1e-12, abs=1e-14)
