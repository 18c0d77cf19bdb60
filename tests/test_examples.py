"""Every example runs end to end with a tiny budget and a tiny model, so none of them can rot."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16}


def load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["mess3_next_token_reveals_belief", "z1r_kstep_needs_more",
                                  "rrxor_joint_futures"])
def test_example_runs(name, capsys):
    out = load(name).main(seconds=0.5, threads=1, model={**TINY, "n_ctx": 6})
    text = capsys.readouterr().out
    assert "What it means" in text
    assert out["gap_nats"] >= 0


def test_z1r_output_only_is_exact():
    """The exact output-only numbers the z1r and rrxor examples print (not network-dependent)."""
    import tinyseq

    z1r = load("z1r_kstep_needs_more")
    only, bayes = z1r.output_only_accuracy(tinyseq.process("z1r"), 10, 1)
    assert only == pytest.approx(bayes)                       # k = 1: the output is all you need
    only, bayes = z1r.output_only_accuracy(tinyseq.process("z1r"), 10, 2)
    assert only < bayes - 0.01                                # k = 2: it is not
    only, bayes, n_out, n_bel = load("rrxor_joint_futures").xor_accuracy(tinyseq.process("rrxor"), 10)
    assert bayes == pytest.approx(2 / 3) and only == pytest.approx(0.5) and n_out < n_bel


def test_myopia_sweep_runs(tmp_path, capsys):
    result = load("myopia_sweep").main(steps=5, seeds=2, workers=1, threads=1, out=str(tmp_path),
                                       model={**TINY, "n_ctx": 3}, horizon=1)
    text = capsys.readouterr().out
    assert [r["variant"] for r in result["rows"]] == ["transformer:ntp", "transformer:myopia=0",
                                                      "transformer:myopia=1", "transformer:myopia=2"]
    assert "What it means" in text and result["n_finished"] == 8


def test_script_runs_from_a_plain_checkout_with_the_budget_variable():
    """`python examples/NAME.py` works without installing tinyseq and honours TINYSEQ_EXAMPLE_SECONDS."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TINYSEQ_EXAMPLE_SECONDS"] = "0.5"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "z1r_kstep_needs_more.py")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "for 0.5 s" in r.stdout and "What it means" in r.stdout
