"""`tinyseq probe` and `tinyseq demo` as a user runs them: tables, JSON with the promised keys, one-line errors."""
import json
import os

import pytest

import tinyseq
from conftest import cli_in_process
from tinyseq.checkpoint import save
from tinyseq.models import build_model

TINY = {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_head": 4, "d_mlp": 16, "n_ctx": 5}
TINY_FLAGS = ["--d-model", "8", "--n-layers", "1", "--n-heads", "1", "--d-head", "4", "--d-mlp", "16", "--n-ctx", "5"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    proc = tinyseq.process("mess3")
    model = build_model("transformer", TINY, proc.vocab, seed=0)  # untrained: the probe must still run
    path = str(tmp_path_factory.mktemp("ckpt") / "model.npz")
    save(path, model, process_spec=proc.to_spec(), meta={"process": proc.label})
    return path


def check_json(d):
    assert {"mean_nats", "floor_nats", "gap_nats"} <= set(d["loss"])
    hooks = [r for r in d["belief_recovery"] if r["control"] is None]
    assert [r["hook"] for r in hooks][:1] == ["blocks.0.hook_resid_pre"] and hooks[-1]["hook"] == "concat"
    assert {r["control"] for r in d["belief_recovery"]} >= {"random_init", "shuffled_labels", "model_output"}
    assert all({"hook", "r2", "mse", "rmse"} <= set(r) for r in d["belief_recovery"])
    assert [r["k"] for r in d["kstep"]] == [1, 2, 3, 4]       # context 5: horizon min(5, 4)
    assert all({"baseline_accuracy", "bayes_accuracy", "rollout_accuracy", "probe_accuracy",
                "belief_route_accuracy", "kl_bits"} <= set(r) for r in d["kstep"])
    assert d["eval_set"]["kind"] == "enumerated"
    assert "true" not in d["picture"]                         # the picture's points stay out of the JSON


def test_probe_prints_tables_and_json(checkpoint):
    r = cli_in_process(["probe", checkpoint])
    assert r.returncode == 0, r.stderr
    for needle in ("Evaluation set: all 243 possible sequences", "Bayes floor", "R^2 init",
                   "shuffled labels", "chained", "route", "true beliefs", "protocol:"):
        assert needle in r.stdout, needle
    r = cli_in_process(["probe", os.path.dirname(checkpoint), "--json", "--horizon", "4"])
    assert r.returncode == 0, r.stderr
    check_json(json.loads(r.stdout))


@pytest.mark.parametrize("args, needle", [
    (["--process", "rrxor"], "token values"),
    (["--horizon", "5"], "horizon"),
])
def test_probe_bad_input_is_one_line(checkpoint, args, needle):
    r = cli_in_process(["probe", checkpoint, *args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_demo_smoke(tmp_path):
    out = str(tmp_path / "demo")
    r = cli_in_process(["demo", "--time", "2", *TINY_FLAGS, "--out", out])
    assert r.returncode == 0, r.stderr
    for needle in ("3 hidden states", "Trained", "Bayes floor", "chained", "true beliefs"):
        assert needle in r.stdout, needle
    path = os.path.join(out, "model.npz")
    assert f"checkpoint: {path}" in r.stdout and os.path.isfile(path)
    r = cli_in_process(["probe", path, "--json"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    check_json(d)
    assert d["checkpoint"] == path
