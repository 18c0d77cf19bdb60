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


# ---------------------------------------------------------------------------------------------------------
# --busy: the arithmetic of a row and the busy child's lifetime (the timed runs themselves are BENCHMARKS.md's)
def test_busy_row_medians_and_paired_ratio():
    from tinyseq.lab.bench import _busy_row

    def runs(rates, chosen=None):
        return [{"steps_per_s": r, "threads": chosen and {"threads": chosen}, "other_load": 0.5} for r in rates]

    row = _busy_row("busy", "default", {"1": runs([10.0, 30.0, 20.0]), "2": runs([2.0, 40.0, 1.0]),
                                         "auto": runs([9.0, 33.0, 20.0], chosen=1)})
    assert row["steps_per_s"] == {"1": 20.0, "2": 2.0, "auto": 20.0}
    assert row["best"] == "1"                          # by median, although "2" had the single fastest run
    assert row["auto_vs_best"] == 1.0                   # median of 0.9, 1.1, 1.0
    assert row["auto_final_threads"] == [1, 1, 1] and row["other_load"] == 0.5


def test_busy_core_child_is_stopped_even_on_an_error():
    from tinyseq.lab.bench import BusyCore

    try:
        with BusyCore() as busy:
            assert busy.proc.poll() is None            # running
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert busy.proc.poll() is not None


def test_bench_busy_bad_option():
    res = cli_in_process(["bench", "--busy", "--presets", "nope"])
    assert res.returncode == 2 and "unknown preset" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------------------
# --end-to-end: the rate arithmetic on made-up timings (the timed runs themselves are BENCHMARKS.md's)
def test_end_to_end_rate_is_the_difference_of_two_runs(monkeypatch):
    from tinyseq.lab import bench

    walls = {"10": [3.0, 3.5], "30": [5.0, 4.5]}          # start-up ~1 s cancels: 20 steps in 2 s, then in 1 s

    def fake_train(args):
        steps = args[args.index("--steps") + 1]
        if steps == "1":                                   # the untimed compile run
            return {"wall": 99.0, "cpu": 99.0, "summary": {}, "other_load": 0.0}
        wall = walls[steps].pop(0)
        return {"wall": wall, "cpu": wall / 2, "summary": {"tokens_per_s": 1000.0}, "other_load": 0.25}

    class FakeWorker:
        def __init__(self, threads):
            self.seconds = [4.0, 1.0]

        def train(self, threads, **run):
            assert run["warm"] == 10 and run["steps"] == 20 and run["clip"] == 1.0
            s = self.seconds.pop(0)
            return {"seconds": s, "cpu": s}

        def close(self):
            pass

    monkeypatch.setattr(bench, "run_train", fake_train)
    monkeypatch.setattr(bench, "TorchWorker", FakeWorker)
    monkeypatch.setattr(bench, "torch_available", lambda: True)
    seen = []
    out = bench.end_to_end(batches=(4,), threads=(1,), steps=(10, 30), repeats=2, callback=seen.append)
    (row,) = out["rows"]
    tokens = 20 * 4 * 10                                   # (long - short) steps x batch x n_ctx
    assert row["runs"]["tinyseq"] == [tokens / 2.0, tokens / 1.0]
    assert row["runs"]["tinyseq_cpu"] == [tokens / 1.0, tokens / 0.5]
    assert row["runs"]["torch"] == [tokens / 4.0, tokens / 1.0]
    assert row["tinyseq"] == round((tokens / 2.0 + tokens / 1.0) / 2)     # median of the two repeats
    assert row["ratio_vs_torch"] == 1.5                   # paired: median of 2.0 and 1.0
    assert row["tinyseq_steps_only"] == 1000 and len(seen) == 2
    assert "| 4 | 1 |" in bench.format_end_to_end(out)


def test_bench_end_to_end_bad_steps():
    for steps in ("50", "550,50"):
        res = cli_in_process(["bench", "--end-to-end", "--e2e-steps", steps])
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "e2e-steps" in res.stderr or "short" in res.stderr
