"""Grids of runs: the same process learned by several variants (architecture x objective) and several seeds,
one table of mean +- spread over seeds.

    variants  = parse_grid("transformer:ntp,transformer:myopia=0,gru:ntp")
    result    = run_grid(process, variants, seeds=3, seconds=40)     trains, analyses, saves, aggregates
    print(format_table(result)); print(result["sentence"])
    results   = run_grids([plan_grid(p, variants) for p in processes])   several processes, one pool of workers

A variant is ARCH:OBJECTIVE, ARCH one of transformer, rnn, gru, lstm and OBJECTIVE one of
    ntp          next-token prediction (the ordinary objective)
    myopia=M     next token, but the loss at t sends no gradient to positions more than M steps back
                 (transformer: stop-gradient keys/values; rnn/gru/lstm: truncated BPTT, window M + 1)
    mtp=N        multi-token prediction: N heads, head i predicts x_{t+i} (the plain sum of the N losses)
(objectives.py has the details). Every variant is evaluated the same way: head 1 against the Bayes floor.

What a run measures (tinyseq.analysis.analyse, with the random-init control skipped to keep a grid cheap:
`tinyseq probe` on a saved model shows it):
    gap        mean next-token loss minus the Bayes floor, nats (exact over every sequence when enumerable)
    vs NTP     the same seed's gap minus the NTP variant's gap of the same architecture (the myopia gap for a
               myopia row); seeds pair up, since a seed fixes the initial weights and the data stream
    R^2        affine probe to the exact belief, held-out: the best single hook, and all hooks concatenated
    k-step     for k = 1..K, the accuracy of the logistic probe reading token t+k from the final layer,
               next to Bayes, and KL(P* || model fed its own predictions), bits
Spread is the standard deviation over seeds (ddof 1).

Where runs go: local worker processes (spawned; each sets its own threads before any heavy work, and
workers x threads never exceeds the cores), or, with the optional `distributed` package, an existing Dask
cluster. Every finished run is saved at once as one JSON file under out/runs/ (atomic write), named by a key
that hashes everything that determines its result (process, variant, seed, budget, model and training
config, analysis settings); a re-run of the grid reuses those files and trains only what is missing or changed.
Nothing here prints: run_grid reports progress through a callback.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from tinyseq import pathstar
from tinyseq.errors import TinyseqError
from tinyseq.lab import compare_paths
from tinyseq.lab import fields_text, model_text
from tinyseq.lab import mean_spread as _ms
from tinyseq.lab.compare_paths import PATH_GRID
from tinyseq.objectives import PATH_OBJECTIVES
from tinyseq.pathstar import PathStar
from tinyseq.report import describe_set

DEFAULT_GRID = ("transformer:ntp,transformer:myopia=0,transformer:myopia=1,transformer:myopia=3,"
                "transformer:mtp=2,transformer:mtp=4,gru:ntp,gru:myopia=0,gru:myopia=1")
DEFAULT_SEEDS = 3
# 9 variants x 3 seeds = 27 runs per process.
DEFAULT_SECONDS = 40.0       # --time-per-run when a time budget is asked for
# The default budget is equal *steps* for every variant (load-independent): enough for the transformer and the
# GRU with next-token training to come within 1% of each catalogue process's Bayes floor, as cheaply as the
# calibration found (README, "compare"; BENCHMARKS.md, "The seed's answer in minutes"). rrxor's late positions
# (where the phase of the XOR triples must be inferred) learn faster per token from more, smaller steps: batch 64
# with Adam's beta2 0.99 reached the line in 4,000 steps (half the tokens of 2,000 steps of batch 256, as close).
# Its transformer has 3 blocks with MLPs of 64 (the default: 2 blocks, MLPs of 128): on calibration seeds 10-21
# its worst gap was 0.77% against 0.84% (2 blocks), with a lower mean (0.57 against 0.72); a step costs 1.3x,
# the three-process compare 1.13x. With 2 blocks one seed in 15 ended above 1% (compare's own seed 2).
DEFAULT_BUDGETS = {"mess3": {"steps": 300}, "z1r": {"steps": 300},
                   "rrxor": {"steps": 4000, "batch": 64, "betas": [0.9, 0.99],
                             "model": {"transformer": {"n_layers": 3, "d_mlp": 64}}}}
# any other process: 800 steps of batch 128. At 400 of batch 256 the transformer was within 0.12% on even,
# golden_mean and nond but 6.87% on even:p=0.3 (one seed) and 0.54-0.87% on examples/random_hmm.json; at
# 600 of 256 one seed in 20 of even:p=0.3 ended at 1.59%; at 800 of 128 no run of 68 (7 such processes,
# calibration seeds 10-33) was above 0.57% (BENCHMARKS.md, "Processes compare has no budget for")
DEFAULT_BUDGET_OTHER = {"steps": 800, "batch": 128}


def default_budget(process) -> dict:
    """compare's default steps per run and the training settings that go with them for a process: by catalogue
    name from DEFAULT_BUDGETS; a path-star task pathstar.TRAIN's steps; anything else DEFAULT_BUDGET_OTHER.
    A mixture takes its costliest component's budget (the two-mess3 mixture's transformer: 0.19% of the floor
    after 300 steps); a product the sum of its factors' steps, since the network must learn every factor at once
    (mess3*z1r's transformer: 0.88-0.92% after 300 steps, 0.47-0.51% after 600), with the costliest's settings."""
    from tinyseq.train import TrainConfig

    if isinstance(process, PathStar):
        return {"steps": pathstar.TRAIN["steps"]}
    parts = getattr(process, "factors", None) or getattr(process, "components", None)
    if parts:
        budgets = [default_budget(p) for p in parts]
        costliest = max(budgets, key=lambda b: b["steps"] * b.get("batch", TrainConfig.batch))
        factors = getattr(process, "factors", None) is not None
        return {**costliest, "steps": sum(b["steps"] for b in budgets)} if factors else costliest
    return copy.deepcopy(DEFAULT_BUDGETS.get(process.name.split(":")[0].lower(), DEFAULT_BUDGET_OTHER))


def budgets_text() -> str:
    """The default steps per process in words, for --help: "mess3 300, ..., others 800 (at batch 128)"."""
    def one(name, b):
        notes = ([f"at batch {b['batch']}"] if "batch" in b else []) + [
            f"{kind} {fields_text(m)}" for kind, m in b.get("model", {}).items()]
        return f"{name} {b['steps']}" + (f" ({'; '.join(notes)})" if notes else "")
    return ", ".join([one(n, b) for n, b in DEFAULT_BUDGETS.items()] + [one("others", DEFAULT_BUDGET_OTHER)])


def default_steps(process) -> int:
    """The default steps per run for a process (default_budget)."""
    return default_budget(process)["steps"]


def default_train(process) -> dict:
    """The training settings compare gives every run on this process beyond the defaults (e.g. rrxor's batch)."""
    return {k: v for k, v in default_budget(process).items() if k not in ("steps", "model")}


def default_model(process, kinds) -> dict:
    """The model settings compare gives this process's runs beyond the defaults, {kind: {field: value}}, for the
    architectures in `kinds` (e.g. rrxor's 3-block transformer)."""
    return {k: m for k, m in default_budget(process).get("model", {}).items() if k in kinds}


def default_grid(process) -> str:
    """compare's grid when --grid is not given: DEFAULT_GRID, or PATH_GRID for a path-star task."""
    return PATH_GRID if isinstance(process, PathStar) else DEFAULT_GRID
DEFAULT_HORIZON = 3          # k = 1..3: enough to see the k-step structure, narrow enough for one table
NOISE_SPREADS = 2.0          # a difference counts as real when it exceeds this many seed spreads of NTP's gap
RESULT_VERSION = 1           # bump when what a run file holds changes (old files are then re-run)


# ----------------------------------------------------------------------------------------------------------
# variants and the grid syntax
@dataclass(frozen=True)
class Variant:
    kind: str                    # transformer, rnn, gru, lstm
    heads: int = 1               # N output heads (mtp=N); 1 = next token only
    myopia: int | None = None    # M (myopia=M); None = ordinary backward
    path: str | None = None      # a path-star objective (reverse, teacherless); None = the path as written

    @property
    def objective(self) -> str:
        return self.path or ("ntp" if self.heads == 1 else f"mtp:{self.heads}")

    @property
    def name(self) -> str:
        if self.path:
            return f"{self.kind}:{self.path}"
        if self.heads > 1:
            return f"{self.kind}:mtp={self.heads}"
        if self.myopia is not None:
            return f"{self.kind}:myopia={self.myopia}"
        return f"{self.kind}:ntp"

    @property
    def is_ntp(self) -> bool:
        return self.heads == 1 and self.myopia is None and self.path is None


GRID_HELP = ("a comma-separated list of ARCH:OBJECTIVE, ARCH one of transformer, rnn, gru, lstm and OBJECTIVE "
             "ntp, myopia=M (M >= 0), mtp=N (N >= 2) or, for path-star, reverse or teacherless, "
             "e.g. transformer:ntp,transformer:myopia=0,gru:ntp")


def parse_variant(text: str) -> Variant:
    from tinyseq.models import KINDS

    item = text.strip()
    if ":" not in item:
        raise TinyseqError(f"grid entry {item!r} has no objective: write ARCH:OBJECTIVE, e.g. {item or 'gru'}:ntp")
    kind, obj = (s.strip().lower() for s in item.split(":", 1))
    if kind not in KINDS:
        raise TinyseqError(f"grid entry {item!r}: unknown architecture {kind!r}: use one of {', '.join(KINDS)}")
    if obj == "ntp":
        return Variant(kind)
    if obj in PATH_OBJECTIVES:
        return Variant(kind, path=obj)
    name, eq, value = obj.partition("=")
    name, value = name.strip(), value.strip()
    if name not in ("myopia", "mtp"):
        raise TinyseqError(f"grid entry {item!r}: unknown objective {obj!r}: use ntp, myopia=M or mtp=N (path-star "
                           f"also reverse, teacherless)")
    if not eq or not value.isdigit():
        raise TinyseqError(f"grid entry {item!r}: {name} needs a whole number, e.g. {kind}:{name}="
                           f"{'1' if name == 'myopia' else '2'}")
    n = int(value)
    if name == "myopia":
        return Variant(kind, myopia=n)
    if n < 2:
        raise TinyseqError(f"grid entry {item!r}: mtp=N needs N >= 2 heads (mtp=1 is {kind}:ntp)")
    return Variant(kind, heads=n)


def parse_grid(text) -> list[Variant]:
    """'transformer:ntp,gru:myopia=1' (or a list of such strings) -> [Variant]; one-line errors."""
    items = text.split(",") if isinstance(text, str) else list(text)
    if not any(str(i).strip() for i in items):
        raise TinyseqError(f"the grid is empty: give {GRID_HELP}")
    variants = []
    for item in items:
        if not str(item).strip():
            raise TinyseqError(f"the grid {text!r} has an empty entry (two commas in a row?)")
        v = parse_variant(str(item))
        if v in variants:
            raise TinyseqError(f"grid entry {v.name} appears twice")
        variants.append(v)
    return variants


# ----------------------------------------------------------------------------------------------------------
# one run: its spec (everything that determines the result), its key, and the work itself
def run_specs(process, variants, seeds, seconds=None, steps=None, model_overrides=None, horizon=DEFAULT_HORIZON,
              train_overrides=None) -> list[dict]:
    """One JSON-able spec per (variant, seed). model_overrides: {kind: {field: value}} on top of the model
    defaults (e.g. {"transformer": {"d_model": 16}}); train_overrides: TrainConfig fields for every run."""
    from tinyseq.models import config_to_dict, make_config
    from tinyseq.objectives import objective_from
    from tinyseq.runs import task_defaults
    from tinyseq.train import DEFAULT_LR, TrainConfig, task_for

    if (seconds is None) == (steps is None):
        raise TinyseqError("give one budget per run: seconds or steps")
    budget = {"time": float(seconds)} if seconds is not None else {"steps": int(steps)}
    model_overrides = model_overrides or {}
    unknown = sorted(set(model_overrides) - {v.kind for v in variants})
    if unknown:
        raise TinyseqError(f"model settings (--set) for {' and '.join(unknown)}, which the grid does not train: add "
                           f"e.g. {unknown[0]}:ntp to the grid or drop those settings")
    specs = []
    for v in variants:
        task_model, task_train = task_defaults(process, v.kind)     # path-star: its model and settings
        task_train.pop("steps", None)
        cfg = make_config(v.kind, {**task_model, **model_overrides.get(v.kind, {}), "n_future": v.heads},
                          process.vocab)
        if v.myopia is not None and v.myopia >= cfg.n_ctx:
            raise TinyseqError(f"grid entry {v.name}: myopia {v.myopia} reaches beyond the context of "
                               f"{cfg.n_ctx}; use 0..{cfg.n_ctx - 1} (M = {cfg.n_ctx - 1} cuts nothing)")
        if not isinstance(process, PathStar) and not 1 <= horizon < cfg.n_ctx:
            raise TinyseqError(f"horizon {horizon} needs {horizon + 1} tokens but {v.kind}'s context is "
                               f"{cfg.n_ctx}: use 1..{cfg.n_ctx - 1}")
        for seed in seeds:
            tc = TrainConfig(**{**task_train, **(train_overrides or {}), **budget}, seed=int(seed),
                             objective=v.objective, myopia=v.myopia, threads=None)
            if tc.lr is None:
                tc = dataclasses.replace(tc, lr=DEFAULT_LR[v.kind])       # written into the key explicitly
            task_for(process, objective_from(tc.validate())).check(cfg)    # e.g. reverse on an HMM: one line
            specs.append({"version": RESULT_VERSION, "process": process.to_spec(), "variant": v.name,
                          "seed": int(seed), "budget": budget, "model": config_to_dict(cfg),
                          "train": tc.to_dict(),
                          "analysis": {"horizon": int(horizon), "random_init": None}})
    return specs


def parse_settings(items) -> dict:
    """["transformer.n_layers=3", "gru.hidden=32"] (compare's --set) -> {"transformer": {"n_layers": 3}, ...};
    a value is read as an integer, else a number, else text. The names are checked where the model is made."""
    from tinyseq.models import KINDS

    settings: dict = {}
    for item in items:
        target, eq, text = str(item).partition("=")
        kind, dot, field = target.strip().partition(".")
        if not eq or not dot or not field.strip() or not text.strip():
            raise TinyseqError(f"--set {item!r}: write ARCH.FIELD=VALUE, e.g. transformer.n_layers=3")
        if kind.lower() not in KINDS:
            raise TinyseqError(f"--set {item!r}: unknown architecture {kind!r}: use one of {', '.join(KINDS)}")
        if field.strip() == "n_future":
            raise TinyseqError(f"--set {item!r}: the output heads come from the grid: put {kind}:mtp=N in --grid")
        settings.setdefault(kind.lower(), {})[field.strip()] = _setting_value(text.strip())
    return settings


def _setting_value(text: str):  # "3" -> 3, "0.05" -> 0.05, "gelu" -> "gelu"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_key(spec: dict) -> str:
    """A hash of everything that determines a run's result; a changed setting gives a new key."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_file(out: str, spec: dict) -> str:
    slug = spec["variant"].replace(":", "-").replace("=", "")
    return os.path.join(out, "runs", f"{slug}-seed{spec['seed']}-{run_key(spec)}.json")


def run_one(spec: dict, threads: int | None = None) -> dict:
    """Train and analyse one run (in a worker process or a Dask worker); returns a JSON-able record.
    Errors a user can act on (e.g. a diverged run) come back as {"status": "failed", "error": ...}."""
    from tinyseq.models import config_from_dict, model_from_config
    from tinyseq.processes import process_from_dict
    from tinyseq.threads import set_threads
    from tinyseq.train import TrainConfig, train

    set_threads(threads)                  # before any heavy work: BLAS and Numba thread pools of this process
    t0 = time.perf_counter()
    record = {"key": run_key(spec), "spec": spec}
    try:
        proc = process_from_dict(spec["process"])
        config = TrainConfig.from_dict(spec["train"])
        model = model_from_config(config_from_dict(spec["model"]), dtype=config.dtype, seed=spec["seed"],
                                  backend=config.backend)
        summary = train(proc, model, config)
        if summary["status"] != "finished":
            return {**record, "status": summary["status"]}
        if config.time is not None and summary["steps"] < config.warmup:
            return {**record, "status": "failed",
                    "error": f"trained only {summary['steps']} steps in {config.time:g} s, fewer than the "
                             f"{config.warmup} warmup steps: the machine was too busy or --time-per-run too short; "
                             f"re-run to retry it"}
        t1 = time.perf_counter()
        measured = (compare_paths.measure(model, proc, config.objective if config.objective in PATH_OBJECTIVES
                                          else "ntp", spec["seed"])
                    if isinstance(proc, PathStar) else measure_beliefs(model, proc, spec))
    except TinyseqError as e:
        return {**record, "status": "failed", "error": str(e)}
    return {**record, "status": "finished",
            "train": {"steps": summary["steps"], "tokens": summary["tokens"], "seconds": summary["seconds"],
                      "tokens_per_s": summary["tokens_per_s"], "params": summary["params"],
                      "train_eval_gap_nats": summary["loss"]["gap_nats"]},
            **measured,
            "seconds": {"train": t1 - t0, "analysis": time.perf_counter() - t1,
                        "total": time.perf_counter() - t0}, "threads": threads}


def measure_beliefs(model, proc, spec: dict) -> dict:
    """What one run on a hidden Markov process measures: loss against the floor, belief R^2, k-step."""
    from tinyseq.analysis import analyse

    a = analyse(model, proc, horizon=spec["analysis"]["horizon"], seed=spec["seed"], random_init=None,
                dimensions_stage=False)
    rows = [r for r in a["belief_recovery"] if r["control"] is None]
    singles = [r for r in rows if r["hook"] != "concat"]
    concat = next((r for r in rows if r["hook"] == "concat"), None)
    best = max(singles, key=lambda r: r["r2"])
    return {"loss": {k: a["loss"][k] for k in ("mean_nats", "floor_nats", "gap_nats", "floor_exact")},
            "belief": {"best_hook": best["hook"], "best_label": best["label"], "best_r2": best["r2"],
                       "best_mse": best["mse"],
                       "concat_r2": concat["r2"] if concat else best["r2"],
                       "concat_mse": concat["mse"] if concat else best["mse"],
                       "output_r2": next((r["r2"] for r in a["belief_recovery"]
                                          if r["control"] == "model_output"), None)},
            "kstep": [{k: r[k] for k in ("k", "baseline_accuracy", "bayes_accuracy", "probe_accuracy",
                                         "rollout_accuracy", "kl_bits")} for r in a["kstep"]],
            "kstep_hook": a["kstep_hook_label"], "ranks": a["ranks"], "eval_set": describe_set(a["eval_set"]["facts"])}


def load_run(path: str, spec: dict) -> dict | None:
    """A finished run saved at `path` for exactly this spec, or None (missing, unreadable, another key)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "finished" or record.get("key") != run_key(spec) \
            or record.get("spec") != json.loads(json.dumps(spec)):
        return None
    budget, warmup = spec["budget"], spec["train"].get("warmup", 0)
    if "time" in budget and record.get("train", {}).get("steps", 0) < warmup:
        return None                      # starved by a busy machine (older files): not a measurement, retrain
    return record


def save_json(path: str, obj) -> None:
    """Atomic JSON write (a temporary file in the same folder, then rename)."""
    from tinyseq.train import write_summary

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_summary(path, obj)


# ----------------------------------------------------------------------------------------------------------
# running the grid
def plan_workers(n_runs: int, workers: int | None, threads: int | None, cores: int | None = None):
    """(workers, threads per run) for local runs: never more than the cores in total."""
    from tinyseq.threads import default_threads

    cores = cores or default_threads()
    for name, value in (("workers", workers), ("threads-per-run", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TinyseqError(f"--{name} must be a positive integer, got {value!r}")
    if workers is None:
        workers = max(1, min(cores // (threads or 1), max(n_runs, 1)))
    if threads is None:
        threads = max(1, cores // workers)
    if workers * threads > cores:
        raise TinyseqError(f"--workers {workers} x {threads} thread{'s' if threads > 1 else ''} per run needs "
                           f"{workers * threads} cores but this machine has {cores}: use --workers "
                           f"{max(1, cores // threads)} or fewer")
    return workers, threads


def _worker_init(threads):
    import signal

    # Ctrl-C goes to the whole process group: the parent stops the pool; a worker must not print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tinyseq.threads import set_threads
    set_threads(threads)


def _run_task(args):
    return run_one(*args)


def _local_results(todo, workers, threads):
    """Yield run records as they finish, from `workers` spawned processes (in this process for 1 worker)."""
    if workers == 1:
        for spec in todo:
            yield run_one(spec, threads)
        return
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(threads,))
    try:
        yield from pool.imap_unordered(_run_task, [(spec, threads) for spec in todo])
        pool.close()
    finally:
        pool.terminate()                     # Ctrl-C or an error: stop the runs in flight (their files are not written)
        pool.join()


def _dask_results(todo, address, threads):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise TinyseqError("--dask needs the optional Dask extra: pip install 'dask[distributed]'") from None
    own = not isinstance(address, Client)
    try:
        client = Client(address, timeout="10s") if own else address
    except (OSError, TimeoutError, ValueError) as e:
        raise TinyseqError(f"cannot reach the Dask scheduler at {address}: {' '.join(str(e).split())}") from None
    futures = [client.submit(run_one, spec, threads, pure=False, key=f"tinyseq-{run_key(spec)}-{i}")
               for i, spec in enumerate(todo)]
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.cancel(futures)
        if own:
            client.close()


@dataclass
class Grid:
    """One process's grid before and while it runs: every spec, the runs already saved, what is left to train."""
    process: object
    variants: list
    seeds: list
    specs: list
    records: dict                    # {key: finished record}, saved ones first
    todo: list                       # specs still to train
    out: str | None
    horizon: int
    emit: object                     # callback(event: dict)
    models: dict = dataclasses.field(default_factory=dict)    # {kind: {field: value}} beyond the task's model
    failed: list = dataclasses.field(default_factory=list)


def plan_grid(process, variants, seeds=DEFAULT_SEEDS, seconds=None, steps=None, out=None, horizon=DEFAULT_HORIZON,
              model_overrides=None, train_overrides=None, callback=None) -> Grid:
    """The specs of one process's grid and which of them are already saved under `out` (see run_grid)."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise TinyseqError(f"seeds must be a positive count or distinct seeds >= 0, got {seeds!r}")
    if seconds is not None and steps is not None:
        seconds = None                               # an explicit step budget wins (tests, exact repeats)
    if seconds is None and steps is None:
        steps = default_steps(process)
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0 and math.isfinite(seconds)):
        raise TinyseqError(f"--time-per-run must be a positive number of seconds, got {seconds!r}")
    emit = callback or (lambda event: None)
    # evaluated once, at the end: nothing shows a run's intermediate evaluations (12 ms each on rrxor, 40 a run)
    train_overrides = {"eval_every": 0, **default_train(process), **(train_overrides or {})}
    given, defaults = model_overrides or {}, default_model(process, {v.kind for v in variants})
    model_overrides = {k: {**defaults.get(k, {}), **given.get(k, {})} for k in {**defaults, **given}}
    specs = run_specs(process, variants, seeds, seconds, steps, model_overrides, horizon, train_overrides)
    records, todo = _saved_runs(specs, out, emit)
    return Grid(process, variants, seeds, specs, records, todo, out, horizon, emit, model_overrides)


def run_grid(process, variants, seeds=DEFAULT_SEEDS, seconds=None, steps=None, workers=None,
             threads_per_run=None, out=None, horizon=DEFAULT_HORIZON, model_overrides=None, train_overrides=None,
             dask=None, callback=None) -> dict:
    """Train and analyse every (variant, seed) not already saved under `out`, then aggregate.

    seeds: a count (seeds 0..n-1) or a list. Budget per run: seconds or steps (default: default_steps(process)).
    out: a directory
    (None: nothing is saved or reused). dask: a scheduler address ("tcp://host:8786") or a distributed.Client
    to run on instead of local worker processes. callback(event: dict) gets "plan", "cached", "finished",
    "failed" events. Ctrl-C returns the aggregate of the runs finished so far, with status "interrupted".
    """
    grid = plan_grid(process, variants, seeds, seconds, steps, out, horizon, model_overrides, train_overrides,
                     callback)
    return run_grids([grid], workers, threads_per_run, dask)[0]


def run_grids(grids, workers=None, threads_per_run=None, dask=None) -> list[dict]:
    """Several processes' grids (plan_grid) in one pool of workers, so no worker waits at the end of one grid
    while the next could start; the costliest runs go first (fewest idle workers at the very end). Returns
    one aggregate per grid, in order."""
    todo = list({run_key(s): s for g in grids for s in g.todo}.values())     # a process given twice runs once
    todo.sort(key=run_cost, reverse=True)
    if dask is None:
        workers, threads_per_run = plan_workers(len(todo), workers, threads_per_run)
    else:
        workers, threads_per_run = None, threads_per_run or 1
    for g in grids:
        budget = g.specs[0]["budget"] if g.specs else {}
        g.emit({"event": "plan", "runs": len(g.specs), "cached": len(g.specs) - len(g.todo), "todo": len(g.todo),
                "workers": workers, "threads_per_run": threads_per_run, "seconds": budget.get("time"),
                "steps": budget.get("steps"), "dask": None if dask is None else str(dask), "out": g.out,
                "all_todo": len(todo)})
    t0 = time.perf_counter()
    results = (_dask_results(todo, dask, threads_per_run) if dask is not None
               else _local_results(todo, workers, threads_per_run))
    status = _collect(results, grids, t0)
    return [_grid_result(g, status, workers, threads_per_run, dask, time.perf_counter() - t0) for g in grids]


def run_cost(spec: dict) -> float:
    """A run's expected cost for ordering the work: tokens of training (steps x batch x context), or its seconds
    (one compare gives every run the same kind of budget)."""
    budget, train, model = spec["budget"], spec["train"], spec["model"]
    if "time" in budget:
        return budget["time"]
    return budget["steps"] * train["batch"] * model.get("n_ctx", 1)


def _grid_result(g: Grid, status, workers, threads_per_run, dask, seconds) -> dict:
    """The aggregate of one grid's finished runs, with how it ran; saved as out/compare.json."""
    ordered = [g.records[run_key(s)] for s in g.specs if run_key(s) in g.records]
    budget = {**g.specs[0]["budget"], "batch": g.specs[0]["train"]["batch"]} if g.specs else None
    models = {kind: fields for kind, fields in g.models.items() if fields}      # an empty {} changes nothing
    if budget and models:
        budget["model"] = models
    result = aggregate(g.process, g.variants, g.seeds, ordered, g.horizon, budget)
    result.update({"status": status, "out": g.out, "n_runs": len(g.specs), "n_finished": len(ordered),
                   "n_failed": len(g.failed), "failed": [{"variant": f["spec"]["variant"], "seed": f["spec"]["seed"],
                                                          "error": f["error"]} for f in g.failed],
                   "workers": workers,
                   "threads_per_run": threads_per_run, "dask": None if dask is None else str(dask),
                   "seconds": seconds})
    if g.out:
        save_json(os.path.join(g.out, "compare.json"), result)
    return result


def _saved_runs(specs, out, emit):  # -> ({key: record} already saved under out, [specs still to train])
    records, todo = {}, []
    for spec in specs:
        saved = load_run(run_file(out, spec), spec) if out else None
        if saved is not None:
            records[saved["key"]] = saved
            emit({"event": "cached", "variant": spec["variant"], "seed": spec["seed"], "path": run_file(out, spec)})
        else:
            todo.append(spec)
    return records, todo


def _collect(results, grids, t0):  # -> status; saves each finished run into every grid that has its key
    owners = {}
    for g in grids:
        for spec in g.specs:
            owners.setdefault(run_key(spec), []).append(g)
    status = "finished"
    try:
        for record in results:
            if record["status"] not in ("finished", "failed"):
                status = "interrupted"               # a run stopped by Ctrl-C inside train()
                break
            for g in owners[record["key"]]:
                _deliver(g, record, t0)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        close = getattr(results, "close", None)
        if close:
            close()                                  # terminates the pool / cancels the Dask futures
    return status


def _deliver(g: Grid, record, t0) -> None:  # one finished or failed run into its grid: saved, reported
    spec = record["spec"]
    if record["status"] == "failed":
        g.failed.append(record)
        g.emit({"event": "failed", "variant": spec["variant"], "seed": spec["seed"], "error": record["error"],
                "process": g.process.label})
        return
    path = run_file(g.out, spec) if g.out else None
    if path:
        save_json(path, record)
    g.records[record["key"]] = record
    g.emit({"event": "finished", "variant": spec["variant"], "seed": spec["seed"], "path": path,
            "done": len(g.records), "runs": len(g.specs), "process": g.process.label,
            "gap_nats": record["loss"]["gap_nats"] if "loss" in record else None,
            "exact_match": record["paths"]["exact_match"] if "paths" in record else None,
            "seconds": record["seconds"]["total"], "elapsed": time.perf_counter() - t0})


# ----------------------------------------------------------------------------------------------------------
# aggregation over seeds
def aggregate(process, variants, seeds, records, horizon, budget=None) -> dict:
    """Rows of mean +- spread over seeds per variant, and the sentence that says what they show."""
    by_variant = {v.name: {r["spec"]["seed"]: r for r in records if r["spec"]["variant"] == v.name}
                  for v in variants}
    if isinstance(process, PathStar):
        result = {"process": process.label, "task": "pathstar", "task_facts": {"d": process.d, "l": process.l},
                  "n_graphs": pathstar.PROBE_GRAPHS, "horizon": horizon, "seeds": seeds, "budget": budget,
                  "variants": [v.name for v in variants], "rows": compare_paths.aggregate_rows(variants, by_variant),
                  "runs": [r["key"] for r in records]}
        result["sentence"] = compare_paths.summary_sentence(result)
        return result
    rows = []
    for v in variants:
        runs = by_variant[v.name]
        ntp = by_variant.get(Variant(v.kind).name) if Variant(v.kind) in variants else None
        paired = [runs[s]["loss"]["gap_nats"] - ntp[s]["loss"]["gap_nats"]
                  for s in sorted(runs) if ntp and s in ntp] if ntp and not v.is_ntp else []
        ks = []
        for k in range(1, horizon + 1):
            at = [next(x for x in r["kstep"] if x["k"] == k) for r in runs.values()]
            ks.append({"k": k, "bayes_accuracy": _ms([x["bayes_accuracy"] for x in at]),
                       "probe_accuracy": _ms([x["probe_accuracy"] for x in at]),
                       "kl_bits": _ms([x["kl_bits"] for x in at])})
        rows.append({"variant": v.name, "kind": v.kind, "objective": v.objective, "myopia": v.myopia,
                     "seeds": sorted(runs), "gap_nats": _ms([r["loss"]["gap_nats"] for r in runs.values()]),
                     "gap_by_seed": {str(s): runs[s]["loss"]["gap_nats"] for s in sorted(runs)},
                     "floor_nats": _ms([r["loss"]["floor_nats"] for r in runs.values()]),
                     "vs_ntp_nats": _ms(paired) if paired else None,
                     "steps": _ms([r["train"]["steps"] for r in runs.values()]),
                     "best_r2": _ms([r["belief"]["best_r2"] for r in runs.values()]),
                     "concat_r2": _ms([r["belief"]["concat_r2"] for r in runs.values()]),
                     "output_r2": _ms([r["belief"]["output_r2"] for r in runs.values()]),
                     "kstep": ks})
    result = {"process": process.label, "horizon": horizon, "seeds": seeds, "budget": budget,
              "variants": [v.name for v in variants], "rows": rows, "runs": [r["key"] for r in records],
              "eval_set": records[0].get("eval_set") if records else None}
    result["sentence"] = summary_sentence(result)
    return result


# ----------------------------------------------------------------------------------------------------------
# the table and its sentence
def _short(x, digits=2) -> str:
    """Compact scientific notation for small nats: 1.2e-4 (no zero-padded exponent)."""
    if x is None or x != x:
        return "-"
    if x == 0:
        return "0"
    m, e = f"{x:.{digits - 1}e}".split("e")
    return f"{m}e{int(e)}"


def _pm(ms, fmt, spread_fmt=None) -> str:
    if not ms or ms["mean"] is None:
        return "-"
    spread = "" if ms["spread"] is None else f" ±{(spread_fmt or fmt)(ms['spread'])}"
    return fmt(ms["mean"]) + spread


def format_table(result) -> str:
    """One result of run_grid, or a list of them (one per process: then every table gains a process column),
    as four narrow tables: loss, belief R^2, k-step probe accuracy (with each process's Bayes row), k-step KL."""
    from tinyseq.report import fitted_table, wrap

    results = result if isinstance(result, list) else [result]
    tasks = [res for res in results if res.get("task") == "pathstar"]     # each its own table (compare_paths)
    results = [res for res in results if res.get("task") != "pathstar"]
    if tasks:
        return "\n\n".join([compare_paths.format_table(res) for res in tasks]
                            + ([format_table(results)] if results else []))
    if not any(r["seeds"] for res in results for r in res["rows"]):
        return "no finished runs yet"
    many = len(results) > 1
    horizon = max(res["horizon"] for res in results)
    main, r2, acc, kl = [], [], [], []
    for res in results:
        lead = [short_label(res["process"])] if many else []
        for name, r in zip(_row_names(res), res["rows"]):
            main.append(lead + [name, f"{r['steps']['mean']:.0f}" if r["steps"]["mean"] is not None else "-",
                                _pm(r["gap_nats"], _short, _spread), _pm(r["vs_ntp_nats"], _signed, _spread)])
            r2.append(lead + [name, _pm(r["best_r2"], lambda x: f"{x:.3f}"), _pm(r["concat_r2"], lambda x: f"{x:.3f}")])
            acc.append(lead + [name] + _padded([_pm(x["probe_accuracy"], lambda v: f"{v:.4f}") for x in r["kstep"]],
                                              horizon))
            kl.append(lead + [name] + _padded([_pm(x["kl_bits"], _short, _spread) for x in r["kstep"]], horizon))
        acc.append(lead + ["(Bayes)"] + _padded([f"{b:.4f}" for b in _bayes_row(res)], horizon))
    first = ["process"] if many else []
    ks = [f"k={k}" for k in range(1, horizon + 1)]
    cols = lambda n: ("left",) * len(first) + ("left",) + ("right",) * n      # noqa: E731
    return "\n".join([
        wrap(f"{_budget_text(results)}, mean ± spread (standard deviation) over {len(results[0]['seeds'])} seeds. "
             f"loss gap: mean next-token loss minus the Bayes floor. vs NTP: that gap minus the NTP gap of the same "
             f"architecture and seed (for a myopia row, the myopia gap).{_sets_text(results)}"),
        fitted_table(main, first + ["variant", "steps", "loss gap (nats)", "vs NTP (nats)"], cols(3)), "",
        wrap("belief R^2: affine probe to the exact belief, held-out, from the best hook and from all hooks "
             "concatenated. No random-init control here (`tinyseq probe` has it)."),
        fitted_table(r2, first + ["variant", "R^2 best hook", "R^2 concat"], cols(2)), "",
        wrap("k-step probe accuracy: a logistic probe from the final layer to token t+k, expected accuracy under the "
             "exact k-step distribution; the (Bayes) row is the best any predictor can do."),
        fitted_table(acc, first + ["variant"] + ks, cols(horizon)), "",
        wrap("k-step KL (bits): KL(P* || the model fed its own predictions), the chained next-token function."),
        fitted_table(kl, first + ["variant"] + ks, cols(horizon))])


def short_label(label: str) -> str:
    """A process column's name: the label without parameters (mess3*z1r for a product, mixture for a mixture)."""
    return "mixture" if label.startswith("mixture(") else re.sub(r":[^*]*", "", label)


def _row_names(result) -> list[str]:  # variant names, marked where not every seed finished
    n = len(result["seeds"])
    return [r["variant"] if len(r["seeds"]) == n else f"{r['variant']} ({len(r['seeds'])} of {n})"
            for r in result["rows"]]


def _bayes_row(result) -> list[float]:
    done = [r for r in result["rows"] if r["seeds"]]
    return [next((x["bayes_accuracy"]["mean"] for r in done for x in r["kstep"] if x["k"] == k), float("nan"))
            for k in range(1, result["horizon"] + 1)]


def _padded(cells, n) -> list[str]:
    return cells + ["-"] * (n - len(cells))


def _signed(x) -> str:
    return ("+" if x > 0 else "") + _short(x)


def _spread(x) -> str:
    return _short(x, 1)


def _budget_text(results) -> str:  # "mess3: each variant trained 300 steps per run", one clause per process
    def per_run(res):
        b = res.get("budget") or {}
        batch = f" of batch {b['batch']}" if "batch" in b else ""
        return (f"{b['time']:g} s" if "time" in b else f"{b['steps']:,} steps{batch}") if b else "?"
    return "; ".join(f"{res['process']}: each variant trained {per_run(res)} per run{model_text(res)}"
                     for res in results)


def _sets_text(results) -> str:  # "Analysed on mess3: all 59,049 possible sequences ...; rrxor: ..."
    sets = [f"{short_label(res['process'])}: {res['eval_set']}" for res in results if res.get("eval_set")]
    return f" Analysed on {'; '.join(sets)}." if sets else ""


def budget_is_time(result: dict) -> bool:
    return "time" in (result.get("budget") or {})


def summary_sentence(result: dict) -> str:
    """One plain sentence computed from the numbers: which variants are within noise of NTP, what myopia
    costs relative to the seed spread, and whether MTP moves belief R^2 or k-step accuracy."""
    rows = {r["variant"]: r for r in result["rows"] if r["seeds"]}
    clauses = []
    for kind in dict.fromkeys(r["kind"] for r in rows.values()):
        ntp = rows.get(f"{kind}:ntp")
        others = [r for r in rows.values() if r["kind"] == kind and r["variant"] != f"{kind}:ntp"]
        if ntp is None or not others:
            continue
        if ntp["gap_nats"]["spread"] is None:
            clauses.append(f"with one seed the {kind} rows have no spread to judge noise by (use --seeds 3)")
            continue
        parts = (_gap_clauses(ntp, others) + [_mtp_clause(ntp, r) for r in others if r["objective"] != "ntp"]
                 + _stuck_clauses([ntp] + others) + _speed_clauses(result, ntp, others))
        clauses.append(f"for the {kind}, " + "; ".join(parts))
    if clauses:
        return f"On {result['process']}: " + "; ".join(clauses) + "."
    gaps = [(r["gap_nats"]["mean"], r["variant"]) for r in rows.values()]
    if not gaps:
        return "No runs finished."
    best = min(gaps)
    return f"On {result['process']} the smallest loss gap is {best[1]}'s, {_short(best[0])} nats."


def _gap_clauses(ntp, others) -> list[str]:
    """Each variant's loss gap against NTP's, judged by NTP's seed spread: within noise, a cost, or a gain."""
    noise = max(ntp["gap_nats"]["spread"], 1e-12)
    limit = NOISE_SPREADS * noise
    same, costs, gains = [], [], []
    for r in others:
        d = r["vs_ntp_nats"]["mean"] if r["vs_ntp_nats"] else None
        if d is None:
            continue
        label = r["variant"].split(":", 1)[1]
        if abs(d) <= limit:
            same.append(label)
        elif d > 0:
            costs.append(f"{label} costs {_short(d)} nats ({d / noise:.0f}x the spread)")
        else:
            gains.append(f"{label} is {_short(-d)} nats better ({-d / noise:.0f}x the spread)")
    parts = []
    if same:
        parts.append(f"{', '.join(same)} {'is' if len(same) == 1 else 'are'} within noise of NTP "
                     f"(|difference| <= {NOISE_SPREADS:g} x the seed spread of its gap, {_short(noise)} nats)")
    return parts + costs + gains


def _mtp_clause(ntp, r) -> str:
    """Does a multi-token variant move the concatenated belief R^2 or the k >= 2 probe accuracy beyond noise?"""
    dr2 = r["concat_r2"]["mean"] - ntp["concat_r2"]["mean"]
    r2_noise = max(ntp["concat_r2"]["spread"] or 0, r["concat_r2"]["spread"] or 0)
    dacc = [(x["probe_accuracy"]["mean"] - y["probe_accuracy"]["mean"], x["k"],
             max(x["probe_accuracy"]["spread"] or 0, y["probe_accuracy"]["spread"] or 0))
            for x, y in zip(r["kstep"], ntp["kstep"]) if x["k"] > 1]
    big = max(dacc, key=lambda t: abs(t[0])) if dacc else None
    within = abs(dr2) <= NOISE_SPREADS * r2_noise
    text = (f"{r['variant'].split(':', 1)[1]} changes the concatenated belief R^2 by {dr2:+.3f} "
            f"({'within' if within else 'beyond'} noise)")
    beyond = [t for t in dacc if abs(t[0]) > NOISE_SPREADS * t[2]]
    if beyond:
        text += " and moves the k-step probe accuracy beyond noise at " + ", ".join(
            f"k = {k} ({d:+.4f}, seed spread {sp:.4f})" for d, k, sp in beyond)
    elif big is not None:
        text += f" and leaves the k >= 2 probe accuracy within noise (largest change {big[0]:+.4f} at k = {big[1]})"
    return text


def _stuck_clauses(rows) -> list[str]:
    """Seeds that did not learn what the others did (they inflate a variant's spread)."""
    parts = []
    for r in rows:
        gaps = r["gap_by_seed"]
        median = float(np.median(list(gaps.values())))
        stuck = [s for s, g in gaps.items() if g > 0.01 and g > 10 * median]
        if stuck:
            parts.append(f"{r['variant'].split(':', 1)[1]} seed{'s' if len(stuck) > 1 else ''} "
                         f"{', '.join(stuck)} did not converge (gap {', '.join(_short(gaps[s]) for s in stuck)} "
                         f"nats against a median {_short(median)}), which inflates its spread")
    return parts


def _speed_clauses(result, ntp, others) -> list[str]:
    """Under a time budget, fewer steps is part of a variant's price: say so."""
    if not budget_is_time(result):
        return []
    slow = [(r["variant"].split(":", 1)[1], r["steps"]["mean"] / ntp["steps"]["mean"]) for r in others
            if r["steps"]["mean"] and ntp["steps"]["mean"] and r["steps"]["mean"] < 0.8 * ntp["steps"]["mean"]]
    if not slow:
        return []
    return [f"at this fixed time {', '.join(f'{v} trained {100 * (1 - f):.0f}%' for v, f in slow)} "
            f"fewer steps than NTP, so part of {'its' if len(slow) == 1 else 'their'} cost is speed "
            f"(--steps-per-run compares equal steps)"]
