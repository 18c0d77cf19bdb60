"""Objectives (tinyseq/objectives.py): multi-token prediction and myopic training, each checked against its
definition by central differences in float64, the attention cut's Numba twin against the NumPy reference,
bit-for-bit equivalences with ordinary training, and the train command / checkpoint wiring."""
import json
import math
import os

import numpy as np
import pytest

from tinyseq import checkpoint
from tinyseq.errors import TinyseqError
from tinyseq.gradcheck import EPS, numerical_grad, rel_err
from tinyseq.models import build_model
from tinyseq.nn import ops, ops_numba
from tinyseq.nn.recurrent import Recurrent, RecurrentConfig, layer_forward
from tinyseq.nn.transformer import Transformer, TransformerConfig, split_qkv
from tinyseq.objectives import (Objective, model_backward, objective_backward, objective_forward,
                                objective_from)
from tinyseq.processes import parse_process
from tinyseq.train import TrainConfig, train


TOL = 1e-6          # float64 central differences (STYLE.md)
MAX_ENTRIES = 25    # entries probed per tensor


def check_grads(label, loss, tensors, seed=0):
    """tensors: [(name, value array (perturbed in place), analytic gradient)]; central differences of loss()."""
    rng = np.random.default_rng(seed)
    base = loss()
    noise = max(1e-9, 20 * np.finfo(np.float64).eps * abs(base) / (2 * EPS) + 1e-10)
    checked_nonzero = 0
    for name, value, grad in tensors:
        flat, gflat = value.reshape(-1), np.asarray(grad).reshape(-1)
        idx = np.arange(flat.size) if flat.size <= MAX_ENTRIES else rng.choice(flat.size, MAX_ENTRIES, replace=False)
        num = numerical_grad(loss, value, idx)
        ana = gflat[idx]
        err = np.where(np.abs(ana - num) < noise, 0.0, rel_err(ana, num)).max()
        assert err < TOL, f"{label}: {name}: max rel err {err:.2e}"
        checked_nonzero += np.abs(num).max() > 1e-6
    assert checked_nonzero >= len(tensors) // 2, f"{label}: most gradients are ~0, the check cannot fail"


# ----------------------------------------------------------------------------------------------------------
# the attention cut: Numba twin vs NumPy reference
@pytest.mark.parametrize("window", [None, 0, 1, 3, 5, 40])
@pytest.mark.parametrize("shape", [(2, 2, 6, 3), (1, 1, 1, 4), (3, 1, 4, 8)])
def test_attention_backward_window_kernel_matches_reference(shape, window):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    out, att = ops.attention_forward(q, k, v)
    dout = rng.standard_normal(shape)
    ref = ops.attention_backward(dout, q, k, v, att, window=window)
    assert len(ref) == (3 if window is None else 5)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-4)):
        args = [a.astype(dtype) for a in (dout, q, k, v, att)]
        got = ops_numba.attention_backward(*args, window=window)
        assert len(got) == len(ref) and all(g.dtype == dtype for g in got)
        for name, a, b in zip(("dq", "dk", "dv", "dk_far", "dv_far"), got, ref):
            np.testing.assert_allclose(a, b, atol=tol, rtol=10 * tol, err_msg=f"{name} {dtype.__name__}")


@pytest.mark.parametrize("impl", [ops, ops_numba])
def test_attention_cut_splits_the_full_gradient(impl):
    rng = np.random.default_rng(2)
    shape = (2, 2, 5, 3)
    T = shape[2]
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    _, att = ops.attention_forward(q, k, v)
    dout = rng.standard_normal(shape)
    dq, dk, dv = impl.attention_backward(dout, q, k, v, att)
    for window in range(T + 2):
        dq_w, dk_w, dv_w, dk_far, dv_far = impl.attention_backward(dout, q, k, v, att, window=window)
        np.testing.assert_array_equal(dq_w, dq)                       # queries read their own position only
        np.testing.assert_allclose(dk_w + dk_far, dk, atol=1e-13)     # near + far = the whole gradient
        np.testing.assert_allclose(dv_w + dv_far, dv, atol=1e-13)
        if window >= T - 1:                                            # nothing is out of window
            assert not dk_far.any() and not dv_far.any()
            np.testing.assert_array_equal(dk_w, dk)
            np.testing.assert_array_equal(dv_w, dv)
    # window 0: position s keeps only the gradient of its own query; the last position has no later queries
    _, dk0, dv0, dk_far0, _ = impl.attention_backward(dout, q, k, v, att, window=0)
    np.testing.assert_allclose(dv0[:, :, -1], dv[:, :, -1], atol=1e-13)
    assert np.abs(dk_far0[:, :, 0]).max() > 1e-6


# ----------------------------------------------------------------------------------------------------------
# transformer myopia against its definition
def myopic_transformer_loss(model, tokens, x0, dout, M, h_fixed):
    """sum(logits * dout), where in every attention layer the key and value that query t reads from s with
    t - s > M are computed with the current weights from h_fixed[l][s], a *fixed copy* of that layer's ln1
    output (the values of the unperturbed forward); everything else is the ordinary forward."""
    P, cfg = model.params, model.config
    T = tokens.shape[1]
    near = (np.arange(T)[:, None] - np.arange(T)[None, :]) <= M                   # (T, T) query t, key s
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    x = x0
    ln = cfg.normalization_type is not None

    def norm(name, x):
        return ops.layernorm_forward(x, P[f"{name}.w"], P[f"{name}.b"])[0] if ln else x

    for l in range(cfg.n_layers):
        p = f"blocks.{l}"
        W_qkv, b_qkv = model._qkv_gather(l)
        h = norm(f"{p}.ln1", x)
        q, k, v = split_qkv(h @ W_qkv + b_qkv, cfg.n_heads)                         # (B, NH, T, HS)
        _, k_fix, v_fix = split_qkv(h_fixed[l] @ W_qkv + b_qkv, cfg.n_heads)         # weights live, input fixed
        K = np.where(near[None, None, :, :, None], k[:, :, None], k_fix[:, :, None])  # (B, NH, T, T, HS)
        V = np.where(near[None, None, :, :, None], v[:, :, None], v_fix[:, :, None])
        scores = np.einsum("bnth,bntsh->bnts", q, K) / math.sqrt(cfg.d_head)
        scores[..., future] = -np.inf
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        z = np.einsum("bnts,bntsh->bnth", att, V)
        x = x + z.transpose(0, 2, 1, 3).reshape(x.shape[0], T, -1) @ model._W_O(l) + P[f"{p}.attn.b_O"]
        h2 = norm(f"{p}.ln2", x)
        pre = h2 @ P[f"{p}.mlp.W_in"] + P[f"{p}.mlp.b_in"]
        post = ops.relu_forward(pre) if cfg.act_fn == "relu" else ops.gelu_forward(pre)
        x = x + post @ P[f"{p}.mlp.W_out"] + P[f"{p}.mlp.b_out"]
    logits = norm("ln_final", x) @ P["unembed.W_U"] + P["unembed.b_U"]
    return float((logits * dout).sum())


TINY_TRANSFORMERS = {
    "LN relu 2 layers": TransformerConfig(d_vocab=3, n_ctx=6, n_layers=2, d_model=8, n_heads=2, d_head=3,
                                          d_mlp=12, act_fn="relu", initializer_range=0.5),
    "no LN gelu 3 layers": TransformerConfig(d_vocab=3, n_ctx=6, n_layers=3, d_model=6, n_heads=1, d_head=4,
                                             d_mlp=10, act_fn="gelu", normalization_type=None,
                                             initializer_range=0.3),
}


def tiny_transformer(label, backend="numpy", n_future=1):
    import dataclasses

    cfg = dataclasses.replace(TINY_TRANSFORMERS[label], n_future=n_future)
    model = Transformer(cfg, dtype=np.float64, seed=1, backend=backend)
    rng = np.random.default_rng(3)
    for name in model.params.names():            # random biases and gains too: no gradient trivially zero
        model.params[name][...] += 0.1 * rng.standard_normal(model.params[name].shape)
    return model


@pytest.mark.parametrize("M", [0, 1, 3])
@pytest.mark.parametrize("label", list(TINY_TRANSFORMERS))
def test_transformer_myopic_gradient_matches_definition(label, M):
    model = tiny_transformer(label)
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 3, size=(2, 5))
    x0 = model.params["embed.W_E"][tokens] + model.params["pos_embed.W_pos"][:5]
    logits, cache = model.forward(tokens, x0=x0)
    dout = rng.standard_normal(logits.shape)
    h_fixed = [cache[f"blocks.{l}.ln1.hook_normalized"].copy() for l in range(model.config.n_layers)]
    model.params.zero_grad()
    dx0 = model.backward(dout, cache, myopia=M)
    # the Numba backend computes the same myopic gradient
    fast = Transformer(model.config, dtype=np.float64, seed=1, backend="numba")
    fast.params.data[...] = model.params.data
    _, fcache = fast.forward(tokens, x0=x0)
    fast.params.zero_grad()
    fdx0 = fast.backward(dout, fcache, myopia=M)
    np.testing.assert_allclose(fast.params.grad, model.params.grad, atol=1e-12, rtol=1e-9)
    np.testing.assert_allclose(fdx0, dx0, atol=1e-12, rtol=1e-9)

    tensors = [(n, model.params[n], model.params.grads[n]) for n in model.params.names()
               if not n.startswith(("embed.", "pos_embed."))]       # x0 is given: the tables are not read
    tensors.append(("x0", x0, dx0))
    check_grads(f"{label} M={M}", lambda: myopic_transformer_loss(model, tokens, x0, dout, M, h_fixed), tensors)
    # and the cut is real: the myopic input gradient differs from the ordinary one
    model.params.zero_grad()
    full = model.backward(dout, cache)
    assert np.abs(full - dx0).max() > 1e-6


# ----------------------------------------------------------------------------------------------------------
# recurrent myopia = truncated BPTT with bptt_window = M + 1, against its definition
def myopic_recurrent_loss(model, tokens, dout, M, base):
    """sum_t sum(logits_t * dout_t) where logits_t is recomputed from the hidden (and cell) states of the base
    forward at step t-M-1, held fixed, through steps t-M..t: the loss at t reaches at most M steps back."""
    p, cfg = model.params, model.config
    total = 0.0
    for t in range(tokens.shape[1]):
        lo = max(0, t - M)
        x = p["embed.weight"][tokens[:, lo:t + 1]]
        for k in range(cfg.n_layers):
            st = base[f"l{k}"]
            h0 = st["h"][:, lo - 1].copy() if lo > 0 else None
            c0 = st["c"][:, lo - 1].copy() if lo > 0 and cfg.kind == "lstm" else None
            x = layer_forward(cfg.kind, x @ p[f"weight_ih_l{k}"].T + p[f"bias_ih_l{k}"], p[f"weight_hh_l{k}"],
                              p[f"bias_hh_l{k}"], h0, c0)["h"]
        total += float(((x[:, -1] @ p["readout.weight"].T + p["readout.bias"]) * dout[:, t]).sum())
    return total


@pytest.mark.parametrize("M", [0, 2])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_myopia_is_truncated_bptt_m_plus_1(kind, M):
    model = Recurrent(RecurrentConfig(kind=kind, d_vocab=3, hidden=3, n_layers=2, d_embed=4),
                      dtype=np.float64, seed=2, backend="numpy")
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 3, size=(2, 5))
    logits, base = model.forward(tokens)
    dout = rng.standard_normal(logits.shape)
    model.params.zero_grad()
    model_backward(model, dout, base, myopia=M)
    tensors = [(n, model.params[n], model.params.grads[n]) for n in model.params.names()]
    check_grads(f"{kind} M={M}", lambda: myopic_recurrent_loss(model, tokens, dout, M, base), tensors)


# ----------------------------------------------------------------------------------------------------------
# multi-token prediction against its definition
def mtp_models():
    tf = tiny_transformer("LN relu 2 layers", n_future=3)
    rnn = Recurrent(RecurrentConfig(kind="gru", d_vocab=3, hidden=4, n_layers=1, d_embed=5, n_future=3),
                    dtype=np.float64, seed=1, backend="numpy")
    return {"transformer": tf, "gru": rnn}


@pytest.mark.parametrize("myopia", [None, 1])
@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_mtp_gradient_of_weighted_sum_matches_finite_differences(kind, myopia):
    model = mtp_models()[kind]
    obj = Objective(heads=3, weights=(1.0, 0.5, 2.0), myopia=myopia)
    tokens = np.random.default_rng(6).integers(0, 3, size=(3, 5 + 3))      # n_ctx 5 inputs + 3 targets each
    total, losses, saved = objective_forward(model, tokens, obj, ops)
    assert total == pytest.approx(losses[0] + 0.5 * losses[1] + 2.0 * losses[2], rel=1e-14)
    model.params.zero_grad()
    objective_backward(model, saved, obj, ops)
    names = model.params.names()
    assert "mtp.2.W_U" in names or "mtp.2.weight" in names
    if myopia is None:
        loss = lambda: objective_forward(model, tokens, obj, ops)[0]  # noqa: E731
        check_grads(f"{kind} mtp:3", loss, [(n, model.params[n], model.params.grads[n]) for n in names])
    else:   # with a cut, the heads still get their exact gradient (they read their own position only)
        grad = model.params.grad.copy()
        model.params.zero_grad()
        objective_backward(model, saved, Objective(heads=3, weights=obj.weights), ops)
        for n in names:
            if n.startswith(("mtp.", "unembed.", "readout.")):
                np.testing.assert_allclose(model.params.grads[n], grad[slice(*model.params.offsets[n])]
                                           .reshape(model.params[n].shape), atol=1e-14, err_msg=n)


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_mtp_weights_are_respected_and_head_1_is_the_model(kind):
    model = mtp_models()[kind]
    tokens = np.random.default_rng(7).integers(0, 3, size=(3, 5 + 3))
    grads = {}
    for w in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (2.0, 0.5, 3.0)):
        _, _, saved = objective_forward(model, tokens, Objective(heads=3, weights=w), ops)
        model.params.zero_grad()
        objective_backward(model, saved, Objective(heads=3, weights=w), ops)
        grads[w] = model.params.grad.copy()
    e1, e2, e3 = grads[(1.0, 0.0, 0.0)], grads[(0.0, 1.0, 0.0)], grads[(0.0, 0.0, 1.0)]
    np.testing.assert_allclose(grads[(2.0, 0.5, 3.0)], 2.0 * e1 + 0.5 * e2 + 3.0 * e3, atol=1e-13)
    # a head with weight 0 gets no gradient; head 1 alone is the ordinary next-token gradient
    for name in model.params.names():
        o = slice(*model.params.offsets[name])
        if name.startswith("mtp."):
            assert not e1[o].any(), name
    inputs = tokens[:, :5]
    logits, cache = model.forward(inputs)
    np.testing.assert_array_equal(model.logits(inputs), logits)            # logits() is head 1
    loss, probs = ops.cross_entropy_forward(logits, np.ascontiguousarray(tokens[:, 1:6]))
    model.params.zero_grad()
    model.backward(ops.cross_entropy_backward(probs, np.ascontiguousarray(tokens[:, 1:6])), cache)
    np.testing.assert_allclose(e1, model.params.grad, atol=1e-15)
    # head i is scored against x_{t+i}
    _, losses, _ = objective_forward(model, tokens, Objective(heads=3, weights=(1.0, 1.0, 1.0)), ops)
    head3 = model.mtp_logits(cache)[1]
    assert losses[2] == pytest.approx(float(ops.cross_entropy_forward(head3, tokens[:, 3:8])[0]), rel=1e-14)


# ----------------------------------------------------------------------------------------------------------
# training: bit-for-bit equivalences
@pytest.fixture(scope="module")
def mess3():
    return parse_process("mess3")


def run(mess3, kind, objective="ntp", myopia=None, mtp_weights=None, steps=6):
    from tinyseq.objectives import parse_objective

    overrides = ({"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "n_ctx": 4}
                 if kind == "transformer" else {"hidden": 12, "n_ctx": 4})
    overrides["n_future"] = parse_objective(objective)
    model = build_model(kind, overrides, vocab=3, seed=1, backend="numba")
    config = TrainConfig(steps=steps, batch=16, lr=1e-2, warmup=2, eval_every=0, eval_sequences=64, seed=1,
                         objective=objective, myopia=myopia, mtp_weights=mtp_weights)
    summary = train(mess3, model, config)
    return model.params.data.copy(), summary


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_myopia_at_least_n_ctx_minus_1_and_mtp_1_train_exactly_like_ntp(mess3, kind):
    ref, _ = run(mess3, kind)
    for kw in ({"myopia": 3}, {"myopia": 50}, {"objective": "mtp:1"}, {"objective": "MTP:1", "mtp_weights": "1"}):
        got, _ = run(mess3, kind, **kw)
        assert got.tobytes() == ref.tobytes(), kw
    cut, _ = run(mess3, kind, myopia=0)
    assert np.abs(cut - ref).max() > 1e-6                 # a real cut changes training


def test_mtp_training_keeps_head_1_evaluation(mess3):
    _, ntp = run(mess3, "transformer", steps=3)
    _, mtp = run(mess3, "transformer", objective="mtp:2", mtp_weights="1,0.5", steps=3)
    assert mtp["objective"] == {"objective": "mtp:2", "heads": 2, "weights": [1.0, 0.5], "myopia": None}
    assert mtp["loss"]["floor_nats"] == ntp["loss"]["floor_nats"]     # the same next-token floor
    assert len(mtp["loss"]["per_position"]) == 4


def test_interrupted_mtp_myopic_run_resumes_bit_exactly(tmp_path, mess3):
    from tinyseq.train import load_run

    def fresh():
        return build_model("transformer", {"n_layers": 2, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16,
                                           "n_ctx": 4, "n_future": 3}, vocab=3, seed=1)
    config = TrainConfig(steps=8, batch=16, lr=1e-2, warmup=2, eval_every=0, eval_sequences=64, seed=1,
                         objective="mtp:3", mtp_weights="1,0.5,0.25", myopia=1)
    train(mess3, fresh(), config, out=str(tmp_path / "a"))

    def stop(ev):
        if ev["event"] == "step" and ev["step"] == 3:
            raise KeyboardInterrupt
    assert train(mess3, fresh(), config, out=str(tmp_path / "r"), callback=stop)["status"] == "interrupted"
    proc, model, cfg, state = load_run(str(tmp_path / "r" / "model.npz"))
    assert (cfg.objective, cfg.mtp_weights, cfg.myopia, model.config.n_future) == ("mtp:3", "1,0.5,0.25", 1, 3)
    train(proc, model, cfg, out=str(tmp_path / "r"), state=state)
    a, b = (checkpoint.load(tmp_path / d / "model.npz") for d in ("a", "r"))
    assert a.tensors.keys() == b.tensors.keys() and "mtp.3.W_U" in a.tensors
    for k in a.tensors:
        assert a.tensors[k].tobytes() == b.tensors[k].tobytes(), k


# ----------------------------------------------------------------------------------------------------------
# bad values: one line each
@pytest.mark.parametrize("kw, words", [
    ({"objective": "mtp:0"}, "whole number >= 1"),
    ({"objective": "mtp:x"}, "whole number >= 1"),
    ({"objective": "mtp"}, "unknown objective"),
    ({"objective": "nextword"}, "unknown objective"),
    ({"objective": "mtp:2", "mtp_weights": "1,2,3"}, "one weight per head"),
    ({"mtp_weights": "1,1"}, "one weight per head"),
    ({"objective": "mtp:2", "mtp_weights": "1,-1"}, ">= 0"),
    ({"objective": "mtp:2", "mtp_weights": "1,nan"}, ">= 0"),
    ({"objective": "mtp:2", "mtp_weights": "a,b"}, "numbers separated by commas"),
    ({"objective": "mtp:2", "mtp_weights": "0,0"}, "all 0"),
    ({"myopia": -1}, ">= 0"),
    ({"myopia": 1.5}, ">= 0"),
])
def test_bad_objective_values_are_one_line_errors(kw, words):
    with pytest.raises(TinyseqError) as e:
        TrainConfig(**kw).validate()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_model_without_the_heads_is_refused(mess3):
    model = build_model("gru", {"hidden": 4, "n_ctx": 4}, vocab=3)
    with pytest.raises(TinyseqError, match="n_future=2"):
        train(mess3, model, TrainConfig(steps=1, objective="mtp:2"))


def test_objective_from_defaults():
    assert objective_from(TrainConfig()) == Objective(1, (1.0,), None)
    assert objective_from(TrainConfig(objective="mtp:3", myopia=0)).to_dict() == \
        {"objective": "mtp:3", "heads": 3, "weights": [1.0, 1.0, 1.0], "myopia": 0}


# ----------------------------------------------------------------------------------------------------------
# the train command and checkpoints
from conftest import cli_in_process  # noqa: E402  (cli.main in-process: exit code, stdout, stderr)


FLAGS = ["--n-ctx", "4", "--batch", "16", "--eval-sequences", "64", "--warmup", "2", "--eval-every", "0"]


@pytest.mark.parametrize("kind, head", [("transformer", "mtp.2.W_U"), ("lstm", "mtp.2.weight")])
def test_cli_mtp_myopia_checkpoint_load_and_resume(tmp_path, kind, head):
    import tinyseq

    out = str(tmp_path / "run")
    extra = ["--d-model", "8", "--d-head", "4", "--d-mlp", "16"] if kind == "transformer" else ["--hidden", "8"]
    code, stdout, err = cli_in_process(["train", "--process", "mess3", "--model", kind, "--out", out, "--steps",
                                        "4", "--objective", "mtp:2", "--mtp-weights", "1,0.5", "--myopia", "1",
                                        "--checkpoint-every", "2", "--json", *FLAGS, *extra])
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["objective"] == {"objective": "mtp:2", "heads": 2, "weights": [1.0, 0.5], "myopia": 1}
    assert "objective mtp:2, myopia 1" in err
    model = tinyseq.load(os.path.join(out, "model.npz"))
    assert model.config.n_future == 2 and head in model.params.names()
    assert model.meta["objective"]["objective"] == "mtp:2" and model.meta["train"]["myopia"] == 1
    tokens = np.random.default_rng(0).integers(0, 3, size=(2, 4))
    logits, cache = model.forward(tokens)
    np.testing.assert_array_equal(model.logits(tokens), logits)
    assert not np.allclose(model.mtp_logits(cache)[0], logits)
    # the checkpoint round-trips the heads exactly
    ck = checkpoint.load(os.path.join(out, "model.npz"))
    np.testing.assert_array_equal(ck.tensors[head], model.params[head])


def test_cli_bad_objective(tmp_path):
    for args, words in ((["--objective", "mtp:0"], "whole number >= 1"),
                        (["--objective", "mtp:2", "--mtp-weights", "1"], "one weight per head"),
                        (["--myopia", "-2"], ">= 0")):
        code, _, err = cli_in_process(["train", "--process", "mess3", "--out", str(tmp_path / "x"), *args])
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "x" / "model.npz")
