"""`tinyseq bench --quick` runs end to end and prints JSON of the documented shape (no timing assertions)."""
import json

from conftest import cli_in_process


def test_bench_quick_json(compile_probe_once):
    res = cli_in_process(["bench", "--quick", "--json", "--models", "tiny", "--batches", "4", "--threads", "1"])
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
    res = cli_in_process(["bench", "--models", "nope"])
    assert res.returncode == 2 and "unknown bench model" in res.stderr and "Traceback" not in res.stderr
