"""What the commands build before they train or probe: a new run from options, a saved run to resume, the
output folder, a checkpoint with its process. cli.py parses options and prints; the decisions live here, each
refusal one TinyseqError line (exit 2) raised before anything on disk is touched.
"""
from __future__ import annotations

import dataclasses
import os

import tinyseq
from tinyseq.checkpoint import CHECKPOINT_NAME
from tinyseq.errors import TinyseqError
from tinyseq.models import build_model, make_config, model_kind, model_options
from tinyseq.objectives import objective_from
from tinyseq import pathstar
from tinyseq.pathstar import PathStar
from tinyseq.train import PAPER_TRAIN, TrainConfig, check_memory, load_run, task_for, train_options


def flag(name: str) -> str:  # "d_model" -> "--d-model"
    return "--" + name.replace("_", "-")


def split_options(options: dict) -> tuple[dict, dict]:
    """The options a user gave (None = not given), split into model-config and TrainConfig fields."""
    model_names = {o["name"] for o in model_options()}
    train_names = {o["name"] for o in train_options()}
    given_model = {k: v for k, v in options.items() if k in model_names and v is not None}
    given_train = {k: v for k, v in options.items() if k in train_names and v is not None}
    if "betas" in given_train:
        given_train["betas"] = tuple(given_train["betas"])
    return given_model, given_train


def check_model_options(kind: str, given_model: dict) -> None:
    """Every model option given must belong to this kind of model (e.g. --n-heads is transformer only)."""
    names = {o["name"]: o for o in model_options()}
    for name in given_model:
        if kind not in names[name]["kinds"]:
            raise TinyseqError(f"{flag(name)} applies to --model {'/'.join(names[name]['kinds'])}, "
                               f"not --model {kind}")


def paper_preset(kind: str, proc) -> tuple[dict, dict]:
    """--preset paper: the published transformer for mess3 / rrxor and its best training settings."""
    from tinyseq.nn.transformer import paper_config

    if kind != "transformer":
        raise TinyseqError(f"--preset paper is the published transformer; it has no {kind} version: drop --preset")
    if isinstance(proc, PathStar):
        raise TinyseqError(f"--preset paper is the published transformer for mess3 and rrxor; {proc.label} has its "
                           f"own defaults: drop --preset")
    paper = paper_config(proc.name)
    if paper.d_vocab != proc.vocab:
        raise TinyseqError(f"--preset paper was published for {proc.name.split(':')[0]} with {paper.d_vocab} "
                           f"tokens, but {proc.label} has {proc.vocab}")
    model = {k: v for k, v in dataclasses.asdict(paper).items() if k != "d_vocab"}
    return model, dict(PAPER_TRAIN[proc.name.split(":")[0].lower()])


def task_defaults(proc, kind: str) -> tuple[dict, dict]:
    """(model options, training settings) a task starts from before the user's options: none for a hidden
    Markov process (the dataclass defaults), pathstar.MODEL and pathstar.TRAIN for a path-star task."""
    if not isinstance(proc, PathStar):
        return {}, {}
    return {**pathstar.MODEL[kind], "n_ctx": proc.n_ctx}, dict(pathstar.TRAIN)


def new_run(process_spec, kind, preset, given_model, given_train, out, overwrite):
    """A fresh `tinyseq train` run: -> (process, model, TrainConfig, out). Sizes are checked against memory
    and the output folder prepared only after every option is valid."""
    if process_spec is None:
        raise TinyseqError("--process is required: e.g. --process mess3 (or --resume DIR to continue a run)")
    if out is None:
        raise TinyseqError("--out DIR is required: the directory for model.npz and summary.json")
    kind = kind or "transformer"
    check_model_options(kind, given_model)
    proc = tinyseq.process(process_spec)
    overrides, train_defaults = paper_preset(kind, proc) if preset == "paper" else task_defaults(proc, kind)
    overrides.update(given_model)
    config = TrainConfig(**{**train_defaults, **given_train}).validate()
    objective = objective_from(config)
    overrides["n_future"] = objective.heads                  # --objective mtp:N: N output heads
    model_config = make_config(kind, overrides, proc.vocab)
    task_for(proc, objective).check(model_config)            # e.g. reverse on an HMM, a path-star --n-ctx
    check_memory(model_config, config)                       # check the sizes before touching the disk
    out = prepare_out(out, overwrite)
    model = build_model(kind, overrides, proc.vocab, config.dtype, config.seed, config.backend)
    return proc, model, config, out


def prepare_out(out: str, overwrite: bool) -> str:
    """Create --out (one-line errors for a file in the way, no permission, or an existing run)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise TinyseqError(f"--out {out} is a file; give a directory for model.npz and summary.json")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise TinyseqError(f"cannot create --out {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise TinyseqError(f"--out {out} is not writable: choose another directory")
    if os.path.exists(os.path.join(out, CHECKPOINT_NAME)) and not overwrite:
        raise TinyseqError(f"{out} already holds a run ({CHECKPOINT_NAME}): continue it with --resume {out}, "
                           f"replace it with --overwrite, or choose another --out")
    return out


def same_process(a, b) -> bool:
    """The same hidden Markov process (same T, whatever its name) or the same path-star task."""
    if hasattr(a, "T") and hasattr(b, "T"):
        return a.T.shape == b.T.shape and bool((a.T == b.T).all())
    return a.to_spec() == b.to_spec()


RESUME_CHANGEABLE = ("threads", "backend", "eval_every", "checkpoint_every")   # may differ on --resume


def resume_run(resume, process_spec, kind, preset, out, given_model, given_train):
    """--resume: the run's own settings; only performance options and the evaluation / checkpoint cadence may
    change, anything else given must equal the saved value. -> (process, model, TrainConfig, TrainState, folder)"""
    path = os.path.join(resume, CHECKPOINT_NAME) if os.path.isdir(resume) else resume
    folder = os.path.dirname(os.path.abspath(path))
    if out is not None and os.path.abspath(out) != folder:
        raise TinyseqError(f"--resume continues the run in {folder} and writes there: drop --out {out}")
    if preset is not None:
        raise TinyseqError("--preset does not apply to --resume: the run keeps its own model")
    proc, model, config, state = load_run(path, backend=given_train.get("backend"))
    if state.finished:
        raise TinyseqError(f"the run in {folder} already finished ({state.step} steps); start a new one with --out")
    if process_spec is not None:
        given = tinyseq.process(process_spec)
        if not same_process(given, proc):
            raise TinyseqError(f"the run in {folder} was trained on {proc.label}, not {given.label}: drop --process")
    if kind is not None and kind != model_kind(model):
        raise TinyseqError(f"the run in {folder} is a {model_kind(model)}, not a {kind}: drop --model")
    saved = {**{k: getattr(model.config, k, None) for k in given_model},
             **{k: getattr(config, k) for k in given_train if k not in RESUME_CHANGEABLE}}
    for name, value in {**given_model, **given_train}.items():
        if name in saved and saved[name] != value:
            raise TinyseqError(f"the run in {folder} has {flag(name)} {saved[name]}; --resume continues it "
                               f"unchanged: drop {flag(name)}")
    config = dataclasses.replace(config, **{k: v for k, v in given_train.items() if k in RESUME_CHANGEABLE})
    return proc, model, config, state, folder


def default_out(proc, prefix: str, kind: str | None = None) -> str:  # runs/demo-mess3-transformer, runs/compare-z1r
    base = os.path.splitext(os.path.basename(proc.name.split(":")[0]))[0] or "process"
    return os.path.join("runs", "-".join([prefix, base] + ([kind] if kind else [])))


def compare_outs(procs, out) -> list[str]:
    """Where `tinyseq compare` saves each process's runs: --out itself for one process, out/NAME for several
    (default runs/compare-NAME, shared with the single-process command, so saved runs are reused)."""
    names = [os.path.splitext(os.path.basename(p.name.split(":")[0]))[0] or "process" for p in procs]
    if len(set(p.label for p in procs)) != len(procs):
        raise TinyseqError("a process is given twice: give each --process once")
    if out is None:
        outs = [default_out(p, "compare") for p in procs]
    else:
        outs = [out] if len(procs) == 1 else [os.path.join(out, f"{i}-{n}") for i, n in enumerate(names)]
    for where in outs:
        if os.path.exists(where) and not os.path.isdir(where):
            raise TinyseqError(f"--out {where} is a file, not a directory")
    return outs


def demo_run(process_spec, kind, seconds, seed, threads, given_model, horizon, out):
    """`tinyseq demo`'s run: -> (process, model, TrainConfig, out); the folder is replaced on every run."""
    check_model_options(kind, given_model)
    proc = tinyseq.process(process_spec)
    model_defaults, train_defaults = task_defaults(proc, kind)
    train_defaults.pop("steps", None)
    config = TrainConfig(**{**train_defaults, "time": seconds, "seed": seed, "threads": threads}).validate()
    given_model = {**model_defaults, **given_model}
    cfg = make_config(kind, given_model, proc.vocab)
    task_for(proc, objective_from(config)).check(cfg)
    check_memory(cfg, config)                                # sizes that cannot fit: refuse before the disk
    if horizon is not None and not 1 <= horizon < cfg.n_ctx:
        raise TinyseqError(f"--horizon {horizon} needs {horizon + 1} tokens but the context is {cfg.n_ctx}: "
                           f"use 1..{cfg.n_ctx - 1}")
    out = prepare_out(out or default_out(proc, "demo", kind), overwrite=True)
    model = build_model(kind, given_model, proc.vocab, config.dtype, config.seed, config.backend)
    return proc, model, config, out


def demo_facts(proc, n_ctx: int) -> dict:
    """The process facts `tinyseq demo` opens with (report.demo_intro words them)."""
    from tinyseq.beliefs import myopic_entropies, observability_ranks

    facts = {"name": proc.label, "states": proc.n_states, "vocab": proc.vocab, "symbols": list(proc.symbols),
             "context": n_ctx, "ranks": observability_ranks(proc)}
    try:
        facts["floor_nats"] = float(myopic_entropies(proc, n_ctx + 1)[1:].mean())
    except TinyseqError:
        facts["floor_nats"] = float("nan")
    return facts


def probe_paths(model, spec: PathStar, seed: int = 0) -> dict:
    """`tinyseq probe` on a path-star checkpoint: the objective and evaluation seed it was trained with (so
    the held-out graphs are regenerated from the checkpoint alone), a random-init model of its architecture."""
    from tinyseq.models import model_from_config
    from tinyseq.objectives import PATH_OBJECTIVES

    meta = model.meta or {}
    name = (meta.get("objective") or {}).get("objective", "ntp")
    variant = name if name in PATH_OBJECTIVES else "ntp"            # mtp:N writes the path start -> goal
    eval_seed = int((meta.get("train") or {}).get("eval_seed", 0))
    random_model = model_from_config(model.config, seed=1_000_003 + seed)
    return pathstar.analyse_paths(model, spec, variant, random_model, eval_seed=eval_seed, seed=seed)


def checkpoint_path(path: str) -> str:  # a run folder or its model.npz -> the checkpoint file
    inside = os.path.join(path, CHECKPOINT_NAME)
    return inside if os.path.isdir(path) and os.path.isfile(inside) else path


def load_for_probe(checkpoint, process_spec):
    """`tinyseq probe`'s model and process: -> (path, model, process); the saved process unless one is given."""
    path = checkpoint_path(checkpoint)
    model = tinyseq.load(path)
    proc = tinyseq.process(process_spec) if process_spec is not None else model.process
    if proc is None:
        raise TinyseqError(f"{path} does not record its process: pass --process SPEC (e.g. --process mess3)")
    if model.config.d_vocab != proc.vocab:
        raise TinyseqError(f"the checkpoint's model reads {model.config.d_vocab} token values but {proc.label} "
                           f"has {proc.vocab}: pass the --process it was trained on")
    return path, model, proc
