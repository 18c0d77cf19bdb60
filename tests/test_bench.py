"""`tinyseq bench --quick` runs end to end and prints JSON of the documented shape (no timing assertions)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_json():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "bench", "--quick", "--json",
                          "--models", "tiny", "--batches", "4", "--threads", "1"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) >= {"machine", "protocol", "rows", "compile_seconds", "sampling"}
    assert out["sampling"]["numba_tokens_per_s"] > 0 and out["sampling"]["numpy_tokens_per_s"] > 0
    assert out["machine"]["gflops_f32"]["1"] > 0
    assert set(out["compile_seconds"]) == {"cold", "warm"}
    (row,) = out["rows"]
    assert (row["model"], row["kind"], row["batch"], row["threads"]) == ("tiny", "transformer", 4, 1)
    assert row["flops_per_token"] > 0 and row["ceiling_tokens_per_s"] > 0
    contenders = ["tinyseq_numba", "tinyseq_numpy"]
    try:
        import torch  # noqa: F401
        contenders.append("torch")
        assert row["ratio_numba_vs_torch"] > 0
    except ImportError:
        pass
    for label in contenders:
        assert row[label]["tokens_per_s"] > 0
        assert len(row[label]["blocks"]) >= 2
        assert row[label]["fraction_of_ceiling"] > 0


def test_bench_bad_option():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "bench", "--models", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown bench model" in res.stderr and "Traceback" not in res.stderr
