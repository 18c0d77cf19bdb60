"""tinyseq compare: grid syntax, runs saved once and reused, the table and its sentence, workers, Dask."""
import json
import os
import re
import pytest

import tinyseq
from conftest import cli_in_process
from tinyseq.lab import compare as C
from tinyseq.errors import TinyseqError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"transformer": {"n_layers": 1, "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16, "n_ctx": 4},
        "gru": {"hidden": 8, "n_ctx": 4}}


def test_parse_grid():
    v = C.parse_grid("transformer:ntp, transformer:myopia=0,transformer:mtp=2,gru:ntp,gru:myopia=1")
    assert [x.name for x in v] == ["transformer:ntp", "transformer:myopia=0", "transformer:mtp=2", "gru:ntp",
                                   "gru:myopia=1"]
    assert v[2].objective == "mtp:2" and v[1].myopia == 0 and v[0].is_ntp
    assert len(C.parse_grid(C.DEFAULT_GRID)) == 9


@pytest.mark.parametrize("grid, needle", [
    ("", "empty"), ("transformer", "no objective"), ("cnn:ntp", "unknown architecture"),
    ("transformer:foo", "unknown objective"), ("transformer:myopia", "whole number"),
    ("transformer:mtp=x", "whole number"), ("transformer:mtp=1", "N >= 2"),
    ("gru:ntp,gru:ntp", "twice"), ("gru:ntp,,gru:myopia=1", "empty entry")])
def test_parse_grid_errors(grid, needle):
    with pytest.raises(TinyseqError, match=needle) as e:
        C.parse_grid(grid)
    assert "\\n" not in str(e.value)


def test_workers_never_oversubscribe():
    assert C.plan_workers(27, None, None, cores=2) == (2, 1)
    assert C.plan_workers(1, None, None, cores=2) == (1, 2)
    assert C.plan_workers(5, None, 2, cores=4) == (2, 2)
    with pytest.raises(TinyseqError, match="needs 4 cores"):
        C.plan_workers(10, 2, 2, cores=2)


def _grid(out, steps=10, callback=None, variants="transformer:ntp,transformer:myopia=0,transformer:mtp=2,gru:ntp",
          **kw):
    return C.run_grid(tinyseq.process("mess3"), C.parse_grid(variants), seeds=2, steps=steps, workers=1,
                      threads_per_run=1, out=out, horizon=2, model_overrides={k: TINY[k] for k in TINY
                                                                              if k in variants}, callback=callback,
                      **kw)


def test_grid_saves_reuses_and_reruns_changed_settings(tmp_path):
    out = str(tmp_path)
    events = []
    r = _grid(out, callback=events.append)
    assert r["status"] == "finished" and r["n_finished"] == 8 and r["n_failed"] == 0
    runs = os.listdir(os.path.join(out, "runs"))
    assert len(runs) == 8 and not any(f.startswith(".tmp") for f in runs)
    saved = json.load(open(os.path.join(out, "compare.json")))
    assert saved["rows"][0]["variant"] == "transformer:ntp"
    rows = {x["variant"]: x for x in r["rows"]}
    # the paired difference is the seed-by-seed gap difference
    gaps = {}
    for f in runs:
        rec = json.load(open(os.path.join(out, "runs", f)))
        gaps[(rec["spec"]["variant"], rec["spec"]["seed"])] = rec["loss"]["gap_nats"]
    d = [gaps[("transformer:myopia=0", s)] - gaps[("transformer:ntp", s)] for s in (0, 1)]
    assert rows["transformer:myopia=0"]["vs_ntp_nats"]["mean"] == pytest.approx(sum(d) / 2)
    assert rows["transformer:ntp"]["vs_ntp_nats"] is None
    table = C.format_table(r)
    for text in ("transformer:myopia=0", "gru:ntp", "k-step probe accuracy", "(Bayes)", "k=2", "k-step KL", "±", "steps"):
        assert text in table
    assert r["sentence"].startswith("On mess3") and "transformer" in r["sentence"]

    events.clear()                               # the same grid again: nothing is trained
    again = _grid(out, callback=events.append)
    assert [e["event"] for e in events].count("cached") == 8 and again["rows"] == r["rows"]
    events.clear()                               # a changed budget is another run
    _grid(out, steps=11, callback=events.append, variants="gru:ntp")
    assert [e["event"] for e in events].count("finished") == 2


def test_interrupt_keeps_finished_runs(tmp_path):
    out = str(tmp_path)

    def stop(event):
        if event["event"] == "finished":
            raise KeyboardInterrupt

    r = _grid(out, callback=stop, variants="gru:ntp")
    assert r["status"] == "interrupted" and r["n_finished"] == 1
    events = []
    r = _grid(out, callback=events.append, variants="gru:ntp")
    assert r["status"] == "finished" and [e["event"] for e in events].count("cached") == 1


def test_spawned_workers(tmp_path):
    r = C.run_grid(tinyseq.process("z1r"), C.parse_grid("gru:ntp"), seeds=2, steps=10, workers=2,
                   threads_per_run=1, out=str(tmp_path), horizon=1, model_overrides={"gru": TINY["gru"]})
    assert r["n_finished"] == 2 and r["workers"] == 2


def test_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        r = C.run_grid(tinyseq.process("z1r"), C.parse_grid("gru:ntp"), seeds=2, steps=10, out=str(tmp_path),
                       horizon=1, model_overrides={"gru": TINY["gru"]}, dask=client)
    assert r["n_finished"] == 2 and r["dask"]


@pytest.mark.parametrize("args, needle", [
    (["--grid", "transformer:foo"], "unknown objective"),
    (["--grid", "gru:myopia=12"], "beyond the context"),
    (["--workers", "64"], "cores"),
    (["--seeds", "0"], "--seeds"),
    (["--time-per-run", "-1"], "--time-per-run"),
    (["--steps-per-run", "0"], "--steps-per-run"),
    (["--set", "transformer.n_layers"], "ARCH.FIELD=VALUE"),
    (["--set", "n_layers=3"], "ARCH.FIELD=VALUE"),
    (["--set", "cnn.n_layers=3"], "unknown architecture 'cnn'"),
    (["--set", "transformer.n_layer=3"], "unknown transformer option n_layer"),
    (["--set", "transformer.n_layers=two"], "must be an integer"),
    (["--set", "transformer.n_future=3"], "put transformer:mtp=N in --grid"),
    (["--set", "lstm.hidden=8"], "lstm, which the grid does not train: add e.g. lstm:ntp")])
def test_cli_errors_are_one_line(args, needle, tmp_path):
    r = cli_in_process(["compare", "--out", str(tmp_path / "x"), *args])
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("tinyseq")


def test_set_reads_each_setting_as_a_number_where_it_is_one():
    assert C.parse_settings(["transformer.n_layers=3", "Transformer.act_fn=gelu", "transformer.initializer_range=0.05",
                             "gru.hidden = 32"]) == {"transformer": {"n_layers": 3, "act_fn": "gelu",
                                                                     "initializer_range": 0.05}, "gru": {"hidden": 32}}
    assert C.parse_settings([]) == {}


def test_set_reaches_every_run_of_its_architecture_and_the_table_says_so(tmp_path):
    r = cli_in_process(["compare", "--process", "z1r", "--grid", "transformer:ntp,gru:ntp", "--seeds", "1",
                        "--steps-per-run", "2", "--horizon", "1", "--out", str(tmp_path), "--json",
                        *[f"--set=transformer.{k}={v}" for k, v in TINY["transformer"].items()], "--set", "gru.hidden=8"])
    assert r.returncode == 0, r.stderr
    runs = [json.load(open(tmp_path / "runs" / f)) for f in os.listdir(tmp_path / "runs")]
    models = {run["spec"]["variant"]: run["spec"]["model"] for run in runs}
    assert all(models["transformer:ntp"][k] == v for k, v in TINY["transformer"].items())
    assert models["gru:ntp"]["hidden"] == 8 and models["gru:ntp"]["n_ctx"] == 10      # the rest stays default
    result = json.loads(r.stdout)
    assert result["budget"]["model"] == {"transformer": TINY["transformer"], "gru": {"hidden": 8}}
    assert "(transformer: n_layers 1, d_model 8" in " ".join(C.format_table([result]).split())
    assert "(gru: hidden 8)" in " ".join(C.format_table([result]).split())


def test_a_starved_time_run_is_not_reused(tmp_path):
    """A run that a busy machine left with fewer steps than the warmup is no measurement: it is retrained."""
    spec = C.run_specs(tinyseq.process("z1r"), C.parse_grid("gru:ntp"), [0], seconds=1.0)[0]
    path = C.run_file(str(tmp_path), spec)
    record = {"key": C.run_key(spec), "spec": spec, "status": "finished", "train": {"steps": 1}}
    C.save_json(path, record)
    assert C.load_run(path, spec) is None
    record["train"]["steps"] = spec["train"]["warmup"]
    C.save_json(path, record)
    assert C.load_run(path, spec) == record


def test_sentence_names_slower_variants_under_a_time_budget():
    """At a fixed time, a variant that trained far fewer steps is flagged: part of its cost is speed."""
    def row(variant, gaps, steps):
        ms = lambda v: {"mean": sum(v) / len(v), "spread": 1e-5, "n": len(v)}  # noqa: E731
        return {"variant": variant, "kind": "gru", "objective": "ntp", "seeds": [0, 1],
                "gap_nats": ms(gaps), "gap_by_seed": {"0": gaps[0], "1": gaps[1]}, "steps": ms(steps),
                "vs_ntp_nats": None if variant == "gru:ntp" else ms([g - 1e-4 for g in gaps]),
                "concat_r2": ms([1, 1]), "kstep": []}
    result = {"process": "p", "budget": {"time": 40.0},
              "rows": [row("gru:ntp", [1e-4, 1e-4], [500, 500]), row("gru:myopia=0", [1e-3, 1e-3], [250, 250])]}
    text = C.summary_sentence(result)
    assert "myopia=0 costs 9.0e-4 nats" in text and "50% fewer steps" in text
    result["budget"] = {"steps": 500}
    assert "fewer steps" not in C.summary_sentence(result)


def test_several_processes_make_one_table_with_a_process_column(tmp_path):
    results = [C.run_grid(tinyseq.process(p), C.parse_grid("transformer:ntp"), seeds=2, steps=3, workers=1,
                          threads_per_run=1, horizon=2, out=str(tmp_path / p),
                          model_overrides={"transformer": TINY["transformer"]}) for p in ("mess3", "z1r")]
    table = C.format_table(results)
    header = next(line for line in table.splitlines() if line.startswith("process"))
    assert header.split()[:3] == ["process", "variant", "steps"]
    assert any(line.startswith("mess3 ") for line in table.splitlines())
    assert any(line.startswith("z1r ") for line in table.splitlines())
    bayes_rows = [line.split()[0] for line in table.splitlines() if line.split()[1:2] == ["(Bayes)"]]
    assert bayes_rows == ["mess3", "z1r"]                # one Bayes row per process: their limits differ


def test_several_processes_share_one_pool_with_the_same_runs_as_one_at_a_time(tmp_path):
    # run_grids: every process's runs in one queue, the costliest first; each run is the one run_grid would
    # train (same spec, same key, same numbers: a step budget is deterministic) and lands in its own grid
    kw = dict(seeds=2, horizon=2, model_overrides={"gru": TINY["gru"]})
    alone = {p: C.run_grid(tinyseq.process(p), C.parse_grid("gru:ntp"), steps=s, workers=1, threads_per_run=1, **kw)
             for p, s in (("mess3", 3), ("z1r", 6))}
    events = []
    grids = [C.plan_grid(tinyseq.process(p), C.parse_grid("gru:ntp"), steps=s, out=str(tmp_path / p),
                         callback=events.append, **kw) for p, s in (("mess3", 3), ("z1r", 6))]
    todo = sorted([s for g in grids for s in g.todo], key=C.run_cost, reverse=True)
    assert [s["budget"]["steps"] for s in todo] == [6, 6, 3, 3]          # z1r's longer runs are queued first
    together = C.run_grids(grids, workers=1, threads_per_run=1)
    for result, p in zip(together, ("mess3", "z1r")):
        assert result["process"] == alone[p]["process"] and result["n_finished"] == 2
        assert result["runs"] == alone[p]["runs"]                          # same keys
        assert result["rows"][0]["gap_by_seed"] == alone[p]["rows"][0]["gap_by_seed"]
        assert len(os.listdir(tmp_path / p / "runs")) == 2
    assert sum(e["event"] == "plan" for e in events) == 2 and sum(e["event"] == "finished" for e in events) == 4


def test_default_budget_is_equal_steps_per_process():
    assert C.default_steps(tinyseq.process("rrxor")) == C.DEFAULT_BUDGETS["rrxor"]["steps"]
    assert C.default_steps(tinyseq.process("rrxor:p1=0.3,p2=0.5")) == C.DEFAULT_BUDGETS["rrxor"]["steps"]
    assert C.default_steps(tinyseq.process("even")) == C.DEFAULT_BUDGET_OTHER["steps"]
    both = C.default_budget(tinyseq.process("mess3*rrxor"))       # every part's steps, the costlier part's batch
    assert both == {**C.DEFAULT_BUDGETS["rrxor"], "steps": C.DEFAULT_BUDGETS["rrxor"]["steps"] + 300}
    assert C.default_steps(tinyseq.process("mess3*z1r")) == 600
    mixture = tinyseq.process(os.path.join(ROOT, "examples", "two_mess3_mixture.json"))
    assert C.default_budget(mixture) == C.DEFAULT_BUDGETS["mess3"]                    # its costliest component
    z1r = tinyseq.process("z1r")
    specs = C.run_specs(z1r, C.parse_grid("gru:ntp"), [0], steps=C.default_steps(z1r))
    assert specs[0]["budget"] == {"steps": C.DEFAULT_BUDGETS["z1r"]["steps"]}


def test_a_process_default_training_settings_reach_every_run_and_an_explicit_one_wins():
    rrxor = tinyseq.process("rrxor")
    grid = C.plan_grid(rrxor, C.parse_grid("transformer:ntp,gru:ntp"), seeds=1)
    assert {s["train"]["batch"] for s in grid.specs} == {C.DEFAULT_BUDGETS["rrxor"]["batch"]}
    assert {tuple(s["train"]["betas"]) for s in grid.specs} == {tuple(C.DEFAULT_BUDGETS["rrxor"]["betas"])}
    assert {s["budget"]["steps"] for s in grid.specs} == {C.DEFAULT_BUDGETS["rrxor"]["steps"]}
    mine = C.plan_grid(rrxor, C.parse_grid("gru:ntp"), seeds=1, steps=7, train_overrides={"batch": 32})
    assert mine.specs[0]["train"]["batch"] == 32 and mine.specs[0]["budget"] == {"steps": 7}
    assert C.plan_grid(tinyseq.process("mess3"), C.parse_grid("gru:ntp"), seeds=1).specs[0]["train"]["batch"] == 256
    unseen = tinyseq.process(os.path.join(ROOT, "examples", "random_hmm.json"))     # no budget of its own
    spec = C.plan_grid(unseen, C.parse_grid("transformer:ntp"), seeds=1).specs[0]
    assert spec["train"]["batch"] == C.DEFAULT_BUDGET_OTHER.get("batch", 256)
    assert spec["budget"] == {"steps": C.DEFAULT_BUDGET_OTHER["steps"]}


def test_compare_help_states_every_default_budget():
    r = cli_in_process(["compare", "--help"])
    text = " ".join(r.stdout.split()).split("[default: per process, ")[1]
    for name, budget in [*C.DEFAULT_BUDGETS.items(), ("others", C.DEFAULT_BUDGET_OTHER)]:
        steps, said = re.search(rf"\b{name} (\d+)(?: \(([^)]*)\))?", text).groups()
        assert int(steps) == budget["steps"], (name, steps)
        assert ("batch" in budget) == (f"at batch {budget.get('batch')}" in (said or "")), (name, said)
        for kind, fields in budget.get("model", {}).items():
            assert all(f"{field} {value}" in said for field, value in fields.items()) and kind in said, said


def test_rrxor_transformer_is_compares_deeper_model_and_a_given_field_wins(tmp_path):
    rrxor, deeper = tinyseq.process("rrxor"), C.DEFAULT_BUDGETS["rrxor"]["model"]["transformer"]
    grid = C.plan_grid(rrxor, C.parse_grid("transformer:ntp,transformer:mtp=2,gru:ntp"), seeds=1)
    plain = C.plan_grid(tinyseq.process("mess3"), C.parse_grid("transformer:ntp,gru:ntp"), seeds=1)
    base = {s["model"]["kind"]: s["model"] for s in plain.specs}
    for s in grid.specs:
        changed = {k for k in s["model"] if s["model"][k] != base[s["model"]["kind"]][k]} - {"d_vocab", "n_future"}
        assert changed == (set(deeper) if s["model"]["kind"] == "transformer" else set()), s["variant"]
    assert C.plan_grid(rrxor, C.parse_grid("gru:ntp"), seeds=1).specs       # no transformer: nothing to change
    mine = C.plan_grid(rrxor, C.parse_grid("transformer:ntp"), seeds=1, steps=2,
                       model_overrides={"transformer": {"d_mlp": 8, "d_model": 8, "d_head": 4}}, out=str(tmp_path))
    model = mine.specs[0]["model"]
    assert (model["d_mlp"], model["d_model"]) == (8, 8) and model["n_layers"] == deeper["n_layers"]
    result = C.run_grids([mine], workers=1, threads_per_run=1)[0]
    assert result["n_finished"] == 1
    header = " ".join(C.format_table([result]).split())
    assert f"(transformer: n_layers {deeper['n_layers']}, d_mlp 8, d_model 8, d_head 4)" in header
