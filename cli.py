"""tinyseq command line: parses options, calls the package, prints what report.py formats.

Every user mistake ends as one line on stderr and exit code 2, never a traceback (`--debug` shows one).
"""
from __future__ import annotations

import json
import os
import sys

import click

import tinyseq
from tinyseq.errors import TinyseqError


def fail(message: str) -> None:
    """Raise the one-line user error the CLI prints (exit 2)."""
    raise TinyseqError(message)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(tinyseq.__version__, "--version", prog_name="tinyseq")
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """tinyseq: tiny transformers and RNNs on toy hidden Markov processes, measured against exact beliefs.

    Start with `tinyseq processes`, then `tinyseq demo`.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ---------------------------------------------------------------------------------------------------------
# processes
@cli.command("processes")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list instead of the table.")
def processes_cmd(as_json):
    """Table of the process catalogue: sizes, entropy rate, MSP size, observability ranks."""
    from tinyseq import report
    from tinyseq.processes import catalogue_summary

    rows = catalogue_summary()
    if as_json:
        emit_json(rows)
    else:
        click.echo(report.catalogue_table(rows))


@cli.group("process")
def process_group():
    """Inspect one process: exact h(L), Bayes k-step accuracy, ranks."""


@process_group.command("show")
@click.argument("spec")
@click.option("--depth", default=10, show_default=True, type=int, help="Largest block length L for h(L) and the MSP.")
@click.option("--horizon", default=5, show_default=True, type=int, help="Largest k for k-step-ahead accuracy.")
@click.option("--context", default=10, show_default=True, type=int, help="Context length the k-step accuracy conditions on.")
@click.option("--rank-horizon", default=3, show_default=True, type=int,
              help="Future length n for the observability ranks (k-step marginals and joint futures, k <= n).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def process_show_cmd(spec, depth, horizon, context, rank_horizon, as_json):
    """Exact facts about process SPEC (a catalogue name like mess3:x=0.15,a=0.6, or a JSON file)."""
    from tinyseq import report
    from tinyseq.beliefs import process_facts

    proc = tinyseq.process(spec)
    facts = process_facts(proc, depth=depth, horizon=horizon, context=context, rank_horizon=rank_horizon)
    if as_json:
        emit_json(facts)
    else:
        click.echo(report.process_report(facts))


# ---------------------------------------------------------------------------------------------------------
@cli.command("gradcheck")
@click.option("--model", "kind", default="all", show_default=True,
              type=click.Choice(["transformer", "rnn", "gru", "lstm", "all"]), help="Which model family to check.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def gradcheck_cmd(kind, as_json):
    """Check every hand-written gradient against central finite differences (float64, tiny shapes).

    The loss is sum(logits * dout) with a random dout, so no gradient can vanish by construction. Exits 1 if
    any tensor's relative error reaches the threshold (1e-6).
    """
    from tinyseq import gradcheck, report

    results = gradcheck.run(kind)
    failed = any(not r["ok"] for _, _, rows in results for r in rows)
    if as_json:
        emit_json([{"model": k, "case": label, "rows": [{**r, "shape": list(r["shape"])} for r in rows]}
                   for k, label, rows in results])
    else:
        click.echo(report.gradcheck_report(results, gradcheck.REL_TOL))
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------
# train: model and training options are generated from TransformerConfig / RecurrentConfig / TrainConfig
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _model_kinds() -> list[str]:
    from tinyseq.models import KINDS
    return list(KINDS)


def _model_flags(f):
    """One click option per model config field (all kinds share one set; d_vocab comes from the process)."""
    from tinyseq.models import KINDS, model_options

    for opt in reversed(model_options()):
        defaults = opt["default"]
        by_value: dict = {}
        for kind, value in defaults.items():
            by_value.setdefault(value, []).append(kind)
        shown = "; ".join(f"{'/'.join(ks) if len(by_value) > 1 or len(ks) < len(KINDS) else 'all'} {v}"
                          for v, ks in by_value.items())
        only = "" if len(opt["kinds"]) == len(KINDS) else f"{'/'.join(opt['kinds'])} only. "
        f = click.option(_flag(opt["name"]), opt["name"], type=opt["type"], default=None,
                         metavar=opt["type"].__name__.upper(), help=f"{only}{opt['help']} [default: {shown}]")(f)
    return f


def _train_flags(f):
    """One click option per TrainConfig field."""
    from tinyseq.train import train_options

    for opt in reversed(train_options()):
        if opt["type"] is tuple:
            f = click.option(_flag(opt["name"]), opt["name"], type=(float, float), default=None,
                             help=f"{opt['help']} [default: {' '.join(map(str, opt['default']))}]")(f)
            continue
        shown = "" if opt["default"] is None else f" [default: {opt['default']}]"
        f = click.option(_flag(opt["name"]), opt["name"], type=opt["type"], default=None,
                         metavar=opt["type"].__name__.upper(), help=f"{opt['help']}{shown}")(f)
    return f


class _Progress:
    """The training callback: a one-line bar redrawn in place on a terminal, plain periodic lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_draw = 0.0
        self.on_line = False             # a bar is drawn and the cursor is at its end
        self.rate = None                 # smoothed tokens/s
        self.loss = None                 # smoothed training loss
        self.gap = None                  # last evaluation

    def _write(self, text, newline):
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width) + ("\n" if newline else ""))
            self.width = len(text)
            self.on_line = not newline
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    width = 0

    def close(self):
        if self.on_line:
            self.stream.write("\n")
            self.stream.flush()
            self.on_line = False

    def line(self, ev) -> str:
        if ev.get("steps"):
            done = ev["step"] / ev["steps"]
            where = f"step {ev['step']}/{ev['steps']}"
        else:
            done = min(1.0, ev["seconds"] / ev["time"])
            where = f"step {ev['step']} {ev['seconds']:.0f}/{ev['time']:g} s"
        bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
        text = f"{where} [{bar}] {self.rate / 1e3:6.1f}k tok/s  loss {self.loss:.4f}"
        if self.gap is not None:
            text += f"  gap {self.gap['gap_nats']:.5f} nats ({self.gap['gap_percent']:.2f}%) @{self.gap['step']}"
        return text

    def __call__(self, ev):
        import time

        kind = ev["event"]
        if kind == "start":
            what = f"{ev['steps']} steps" if ev["steps"] else f"{ev['time']:g} s"
            obj = ev.get("objective") or {}
            trained = "" if obj.get("objective", "ntp") == "ntp" else f", objective {obj['objective']}"
            trained += "" if obj.get("myopia") is None else f", myopia {obj['myopia']}"
            msg = (f"training a {ev['kind']} ({ev['params']:,} parameters{trained}) for {what} from step "
                   f"{ev['step']}; Bayes floor {ev['floor_nats']:.5f} nats")
            self._write(msg, True)
            self.last_draw = time.perf_counter()
        elif kind == "step":
            self.rate = ev["tokens_per_s"] if self.rate is None else 0.9 * self.rate + 0.1 * ev["tokens_per_s"]
            self.loss = ev["loss"] if self.loss is None else 0.95 * self.loss + 0.05 * ev["loss"]
            now = time.perf_counter()
            if now - self.last_draw >= (0.1 if self.tty else 10.0):
                self._write(self.line(ev), False)
                self.last_draw = now
        elif kind == "eval":
            self.gap = ev
            if not self.tty:
                self._write(f"eval step {ev['step']}: loss {ev['mean_nats']:.5f} nats, floor {ev['floor_nats']:.5f}, "
                            f"gap {ev['gap_nats']:.5f} ({ev['gap_percent']:.2f}%)", False)
                self.last_draw = time.perf_counter()
        elif kind == "end":
            self.close()


@cli.command("train")
@click.option("--process", "process_spec", default=None, metavar="SPEC",
              help="Process to learn: a catalogue name (mess3, mess3:x=0.15,a=0.6) or a JSON file.")
@click.option("--model", "kind", type=click.Choice(_model_kinds()), default=None,
              help="Network to train [default: transformer].")
@click.option("--preset", type=click.Choice(["paper"]), default=None,
              help="paper: the published transformer for mess3 or rrxor (Shai et al. 2024) and its best lr/batch.")
@_model_flags
@_train_flags
@click.option("--out", default=None, metavar="DIR", help="Directory for model.npz and summary.json (created).")
@click.option("--resume", default=None, metavar="DIR", help="Continue the interrupted run saved in DIR.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object at the end.")
def train_cmd(process_spec, kind, preset, out, resume, overwrite, as_json, **options):
    """Train a transformer or an RNN on a process and measure its loss against the Bayes floor h(L).

    The defaults reach within 0.25% of the floor on mess3 in about 10-20 s on 2 cores:

        tinyseq train --process mess3 --out runs/mess3

    Progress goes to stderr; the run ends with model.npz (load it with tinyseq.load) and summary.json.
    Ctrl-C saves a checkpoint; continue with --resume DIR. --steps and --tokens runs resume bit-exactly;
    --time runs follow the wall clock and cannot.

    --objective mtp:N trains N heads (head i predicts x_{t+i}); --myopia M cuts the gradient from the loss at t
    into positions before t-M. Evaluation always uses head 1 against the next-token floor.
    """
    from tinyseq.models import model_options
    from tinyseq.train import TrainConfig, train_options

    model_names = {o["name"]: o for o in model_options()}
    train_names = [o["name"] for o in train_options()]
    given_model = {k: v for k, v in options.items() if k in model_names and v is not None}
    given_train = {k: v for k, v in options.items() if k in train_names and v is not None}
    if "betas" in given_train:
        given_train["betas"] = tuple(given_train["betas"])
    if resume is not None:
        return _train_resume(resume, process_spec, kind, preset, out, given_model, given_train, as_json)

    if process_spec is None:
        fail("--process is required: e.g. --process mess3 (or --resume DIR to continue a run)")
    if out is None:
        fail("--out DIR is required: the directory for model.npz and summary.json")
    kind = kind or "transformer"
    for name, value in given_model.items():
        if kind not in model_names[name]["kinds"]:
            fail(f"{_flag(name)} applies to --model {'/'.join(model_names[name]['kinds'])}, not --model {kind}")
    proc = tinyseq.process(process_spec)
    overrides = {}
    train_defaults = {}
    if preset == "paper":
        import dataclasses

        from tinyseq.nn.transformer import paper_config
        from tinyseq.train import PAPER_TRAIN

        if kind != "transformer":
            fail(f"--preset paper is the published transformer; it has no {kind} version: drop --preset")
        paper = paper_config(proc.name)
        if paper.d_vocab != proc.vocab:
            fail(f"--preset paper was published for {proc.name.split(':')[0]} with {paper.d_vocab} tokens, "
                 f"but {proc.label} has {proc.vocab}")
        overrides = {k: v for k, v in dataclasses.asdict(paper).items() if k != "d_vocab"}
        train_defaults = dict(PAPER_TRAIN[proc.name.split(":")[0].lower()])
    overrides.update(given_model)
    config = TrainConfig(**{**train_defaults, **given_train}).validate()
    from tinyseq.models import build_model, make_config
    from tinyseq.objectives import objective_from

    overrides["n_future"] = objective_from(config).heads     # --objective mtp:N: N output heads

    from tinyseq.train import check_memory

    check_memory(make_config(kind, overrides, proc.vocab), config)   # check the sizes before touching the disk
    out = _prepare_out(out, overwrite)
    model = build_model(kind, overrides, proc.vocab, config.dtype, config.seed, config.backend)
    return _train_run(proc, model, config, out, None, as_json)


def _prepare_out(out: str, overwrite: bool) -> str:
    """Create --out (one-line errors for a file in the way, no permission, or an existing run)."""
    from tinyseq.checkpoint import CHECKPOINT_NAME

    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out {out} is a file; give a directory for model.npz and summary.json")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --out {out}: {e.strerror or e}")
    if not os.access(out, os.W_OK | os.X_OK):
        fail(f"--out {out} is not writable: choose another directory")
    ckpt = os.path.join(out, CHECKPOINT_NAME)
    if os.path.exists(ckpt) and not overwrite:
        fail(f"{out} already holds a run ({CHECKPOINT_NAME}): continue it with --resume {out}, "
             f"replace it with --overwrite, or choose another --out")
    return out


def _train_resume(resume, process_spec, kind, preset, out, given_model, given_train, as_json):
    """--resume: the run's own settings, with only performance options (threads, backend) and the
    evaluation / checkpoint cadence allowed to change; anything else given must equal the saved value."""
    from tinyseq.checkpoint import CHECKPOINT_NAME
    from tinyseq.models import model_kind
    from tinyseq.train import load_run

    path = os.path.join(resume, CHECKPOINT_NAME) if os.path.isdir(resume) else resume
    folder = os.path.dirname(os.path.abspath(path))
    if out is not None and os.path.abspath(out) != folder:
        fail(f"--resume continues the run in {folder} and writes there: drop --out {out}")
    if preset is not None:
        fail("--preset does not apply to --resume: the run keeps its own model")
    proc, model, config, state = load_run(path, backend=given_train.get("backend"))
    if state.finished:
        fail(f"the run in {folder} already finished ({state.step} steps); start a new one with --out")
    if process_spec is not None:
        given = tinyseq.process(process_spec)
        if given.T.shape != proc.T.shape or not (given.T == proc.T).all():
            fail(f"the run in {folder} was trained on {proc.label}, not {given.label}: drop --process")
    if kind is not None and kind != model_kind(model):
        fail(f"the run in {folder} is a {model_kind(model)}, not a {kind}: drop --model")
    for name, value in given_model.items():
        saved = getattr(model.config, name, None)
        if saved != value:
            fail(f"the run in {folder} has {_flag(name)} {saved}; --resume continues it unchanged: drop {_flag(name)}")
    changeable = ("threads", "backend", "eval_every", "checkpoint_every")
    import dataclasses

    for name, value in given_train.items():
        saved = getattr(config, name)
        if name not in changeable and saved != value:
            fail(f"the run in {folder} has {_flag(name)} {saved}; --resume continues it unchanged: drop {_flag(name)}")
    config = dataclasses.replace(config, **{k: v for k, v in given_train.items() if k in changeable})
    return _train_run(proc, model, config, folder, state, as_json)


def _train_run(proc, model, config, out, state, as_json):
    from tabulate import tabulate

    from tinyseq.train import train

    progress = _Progress()
    try:
        summary = train(proc, model, config, out=out, callback=progress, state=state)
    finally:
        progress.close()
    if summary["status"] == "interrupted":
        where = (f"checkpoint of step {summary['steps']} saved to {summary['checkpoint']}" if summary["checkpoint"]
                 else "no checkpoint saved")
        click.echo(f"tinyseq: interrupted; {where}; continue with: tinyseq train --resume {out}", err=True)
        if as_json:
            emit_json(summary)
        sys.exit(130)
    if as_json:
        emit_json(summary)
        return
    loss = summary["loss"]
    rows = [[p["position"], f"{p['loss_nats']:.5f}", f"{p['floor_nats']:.5f}", f"{p['gap_nats']:.5f}"]
            for p in loss["per_position"]]
    click.echo(tabulate(rows, headers=["position L", "loss (nats)", "floor h(L)", "gap"], tablefmt="simple"))
    rate = f"{summary['tokens_per_s']:,.0f}" if summary["tokens_per_s"] else "-"
    click.echo(f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.1f} s "
               f"({rate} tokens/s)")
    floor = "Bayes floor" if loss["floor_exact"] else "estimated floor"
    click.echo(f"loss {loss['mean_nats']:.5f} nats vs {floor} {loss['floor_nats']:.5f}: gap {loss['gap_nats']:.5f} "
               f"nats ({loss['gap_percent']:.2f}% of the floor)")
    click.echo(f"checkpoint: {summary['checkpoint']}  (tinyseq.load(path) in Python)")


# ---------------------------------------------------------------------------------------------------------
# bench
def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        fail(f"--{what} takes positive integers separated by commas, got {text!r}: e.g. --{what} 1,2")
    return values


@cli.command("bench")
@click.option("--models", default="mess3,small", show_default=True,
              help="Comma-separated models: mess3 (the published transformer), small, tiny.")
@click.option("--batches", default="64,256", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", "threads_", default="1,2", show_default=True, help="Comma-separated thread counts.")
@click.option("--quick", is_flag=True, help="Few short blocks: checks that everything runs, numbers are rough.")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch rows even if torch is installed.")
@click.option("--busy", is_flag=True,
              help="Instead: the thread policy end to end, `train --time T` with --threads 1, all cores and auto, "
                   "idle and with one core kept busy by a child process of the bench.")
@click.option("--busy-time", type=float, default=6.0, show_default=True, help="--busy: seconds of each train run.")
@click.option("--repeats", type=int, default=3, show_default=True, help="--busy: interleaved repeats (medians).")
@click.option("--presets", default="default,paper", show_default=True,
              help="--busy: the models, comma-separated: default (train's default) and/or paper (--preset paper).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_cmd(models, batches, threads_, quick, no_torch, busy, busy_time, repeats, presets, as_json):
    """Training tokens/s of tinyseq (Numba and NumPy backends) vs PyTorch eager, interleaved, medians.

    --busy measures the thread policy instead: steps/s of whole `tinyseq train` runs, idle and with one busy core."""
    from tinyseq import bench

    if busy:
        def progress(ev):
            click.echo(f"{ev['load']} {ev['preset']} repeat {ev['repeat'] + 1} --threads {ev['setting']}: "
                       f"{ev['steps_per_s']:.1f} steps/s (other load {ev['other_load']:.2f})", err=True)

        result = bench.busy_comparison(seconds=busy_time, repeats=repeats, callback=progress,
                                       presets=[p.strip() for p in presets.split(",") if p.strip()])
        click.echo(json.dumps(result, indent=2) if as_json else bench.format_busy(result))
        return
    result = bench.run(models=[m.strip() for m in models.split(",") if m.strip()],
                       batches=_int_list(batches, "batches"), threads=_int_list(threads_, "threads"),
                       with_torch=not no_torch, quick=quick)
    if as_json:
        emit_json(result)
    else:
        click.echo(bench.format_table(result))


# ---------------------------------------------------------------------------------------------------------
# probe and demo: the answer on screen (tables of tinyseq.analysis, formatted by report.py)
def _analysis_options(f):
    """Options shared by probe and demo: how the trained network is measured."""
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object with every number instead of tables.")(f)
    f = click.option("--png", metavar="FILE", default=None,
                     help="Also write the belief-simplex picture to FILE (needs matplotlib).")(f)
    f = click.option("--weighting", type=click.Choice(["probability", "uniform"]), default="probability",
                     show_default=True, help="Belief probes over every sequence: weight each by its exact "
                     "probability, or equally (the published mess3 protocol).")(f)
    f = click.option("--eval-set", "eval_set", type=click.Choice(["auto", "enumerate", "sample"]), default="auto",
                     show_default=True, help="auto: every sequence (weighted by its exact probability) when "
                     "vocab^context is at most 100,000, else a large sample.")(f)
    f = click.option("--horizon", type=int, default=None,
                     help="Largest k of the k-step table [default: 5, at most context - 1].")(f)
    return f


def _run_analysis(model, proc, horizon, seed, eval_set, weighting):
    from tinyseq.analysis import analyse

    return analyse(model, proc, horizon=horizon, seed=seed, eval_set=eval_set, weighting=weighting, points=True)


def _print_analysis(a, png, as_json, extra=None, before=()):
    """Tables and picture (or JSON) of one analysis; the picture's points never go into the JSON."""
    from tinyseq import plot, report

    pic = a["picture"]
    true, probed = pic.pop("true"), pic.pop("probed")
    if png:
        plot.simplex_png(png, true, probed, titles=("true beliefs", f"probed from {pic['label']}"))
        pic["png"] = png
    if as_json:
        emit_json({**(extra or {}), **a})
        return
    picture = plot.simplex_picture(true, probed, titles=("true beliefs", f"probed: {pic['label']}"))
    for text in before:
        click.echo(text)
    click.echo(report.probe_report(a, picture))
    if png:
        click.echo(f"picture written to {png}")


def _checkpoint_path(path: str) -> str:
    from tinyseq.checkpoint import CHECKPOINT_NAME

    inside = os.path.join(path, CHECKPOINT_NAME)
    return inside if os.path.isdir(path) and os.path.isfile(inside) else path


def _check_png(png):
    if png:
        folder = os.path.dirname(os.path.abspath(png))
        if not os.path.isdir(folder):
            fail(f"--png {png}: the directory {folder} does not exist")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("--png needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')")


@cli.command("probe")
@click.argument("checkpoint")
@click.option("--process", "process_spec", default=None, metavar="SPEC",
              help="Process to measure against [default: the one saved in the checkpoint].")
@_analysis_options
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the fit/held-out split, the samples and the random-init control.")
@click.option("--threads", default="auto", show_default=True,
              help="BLAS threads: auto (the cores other programs leave free) or a count.")
def probe_cmd(checkpoint, process_spec, horizon, eval_set, weighting, png, as_json, seed, threads):
    """What a saved network holds: belief-state recovery per layer (with random-init, shuffled-label and
    output controls), the k-step-ahead table against Bayes, and the belief simplex.

    \b
        tinyseq probe runs/demo-mess3-transformer/model.npz
    """
    from tinyseq.threads import set_threads, static_threads

    _check_png(png)
    set_threads(static_threads(threads))
    path = _checkpoint_path(checkpoint)
    model = tinyseq.load(path)
    proc = model.process
    if process_spec is not None:
        proc = tinyseq.process(process_spec)
    if proc is None:
        fail(f"{path} does not record its process: pass --process SPEC (e.g. --process mess3)")
    if model.config.d_vocab != proc.vocab:
        fail(f"the checkpoint's model reads {model.config.d_vocab} token values but {proc.label} has {proc.vocab}: "
             f"pass the --process it was trained on")
    a = _run_analysis(model, proc, horizon, seed, eval_set, weighting)
    from tinyseq.models import config_to_dict

    extra = {"checkpoint": path, "model": config_to_dict(model.config)}
    _print_analysis(a, png, as_json, extra, before=[f"{path}: a {model.kind} trained on "
                                                    f"{model.meta.get('process', proc.label)}, probed on {proc.label}"])


@cli.command("demo")
@click.option("--process", "process_spec", default="mess3", show_default=True, metavar="SPEC",
              help="Process to learn: a catalogue name (mess3, rrxor, z1r ...) or a JSON file.")
@click.option("--model", "kind", type=click.Choice(["transformer", "rnn", "gru", "lstm"]), default="transformer",
              show_default=True, help="Network to train.")
@click.option("--time", "seconds", type=float, default=60.0, show_default=True, help="Seconds of training.")
@click.option("--out", default=None, metavar="DIR",
              help="Directory for model.npz and summary.json, replaced on every run [default: runs/demo-PROCESS-MODEL].")
@_analysis_options
@click.option("--seed", type=int, default=0, show_default=True, help="Initial weights, training batches, probe split.")
@click.option("--threads", default="auto", show_default=True,
              help="BLAS threads: auto (timed on the first steps, drops to the free cores when another program "
                   "is busy) or a count.")
@_model_flags
def demo_cmd(process_spec, kind, seconds, out, horizon, eval_set, weighting, png, as_json, seed, threads,
             **model_options):
    """Train a small network on a hidden Markov process, then show what it learned: loss against the Bayes
    floor, the belief state read out of every layer, k-step-ahead predictions, and the belief simplex.

    \b
        tinyseq demo                          mess3, a 2-layer transformer, 60 s of training
        tinyseq demo --process rrxor --model gru --time 30

    Model sizes take the same options as `tinyseq train` (e.g. --d-model 16 --n-layers 1).
    """
    from tinyseq import report
    from tinyseq.beliefs import myopic_entropies, observability_ranks
    from tinyseq.models import build_model, config_to_dict, make_config, model_options as all_model_options
    from tinyseq.train import TrainConfig, train

    _check_png(png)
    names = {o["name"]: o for o in all_model_options()}
    overrides = {k: v for k, v in model_options.items() if v is not None}
    for name in overrides:
        if kind not in names[name]["kinds"]:
            fail(f"{_flag(name)} applies to --model {'/'.join(names[name]['kinds'])}, not --model {kind}")
    proc = tinyseq.process(process_spec)
    config = TrainConfig(time=seconds, seed=seed, threads=threads).validate()
    cfg = make_config(kind, overrides, proc.vocab)
    from tinyseq.train import check_memory

    check_memory(cfg, config)                                # sizes that cannot fit: refuse before the disk
    n_ctx = cfg.n_ctx
    if horizon is not None and not 1 <= horizon < n_ctx:
        fail(f"--horizon {horizon} needs {horizon + 1} tokens but the context is {n_ctx}: use 1..{n_ctx - 1}")
    if out is None:
        base = os.path.splitext(os.path.basename(proc.name.split(":")[0]))[0] or "process"
        out = os.path.join("runs", f"demo-{base}-{kind}")
    out = _prepare_out(out, overwrite=True)
    model = build_model(kind, overrides, proc.vocab, config.dtype, config.seed, config.backend)

    if not as_json:
        facts = {"name": proc.label, "states": proc.n_states, "vocab": proc.vocab, "symbols": list(proc.symbols),
                 "context": n_ctx, "ranks": observability_ranks(proc)}
        try:
            facts["floor_nats"] = float(myopic_entropies(proc, n_ctx + 1)[1:].mean())
        except TinyseqError:
            facts["floor_nats"] = float("nan")
        click.echo(report.demo_intro(facts))
        click.echo(f"\nTraining a {kind} ({model.params.size:,} parameters) for {seconds:g} s; progress on stderr.")
    progress = _Progress()
    try:
        summary = train(proc, model, config, out=out, callback=progress)
    finally:
        progress.close()
    if summary["status"] == "interrupted":
        where = summary["checkpoint"] or "no checkpoint saved"
        click.echo(f"tinyseq: interrupted; checkpoint: {where}; continue with: tinyseq train --resume {out}, "
                   f"then look at it with: tinyseq probe {out}", err=True)
        sys.exit(130)
    a = _run_analysis(model, proc, horizon, seed, eval_set, weighting)
    path = summary["checkpoint"]
    train_line = (f"Trained {summary['steps']:,} steps ({summary['tokens']:,} tokens) in {summary['seconds']:.1f} s.")
    extra = {"checkpoint": path, "model": config_to_dict(model.config),
             "training": {k: v for k, v in summary.items() if k not in ("loss", "model")}}
    _print_analysis(a, png, as_json, extra, before=["", train_line])
    if not as_json:
        click.echo(f"\ncheckpoint: {path}\nlook again with: tinyseq probe {path}")


# ---------------------------------------------------------------------------------------------------------
# compare: a grid of variants x seeds, one table (tinyseq/compare.py)
@cli.command("compare")
@click.option("--process", "process_spec", default="mess3", show_default=True, metavar="SPEC",
              help="Process to learn: a catalogue name (mess3, rrxor, z1r ...) or a JSON file.")
@click.option("--grid", default=None, metavar="VARIANTS",
              help="Comma-separated ARCH:OBJECTIVE, ARCH one of transformer, rnn, gru, lstm; OBJECTIVE ntp, "
                   "myopia=M or mtp=N [default: transformer:ntp,transformer:myopia=0,transformer:myopia=1,"
                   "transformer:myopia=3,transformer:mtp=2,transformer:mtp=4,gru:ntp,gru:myopia=0,gru:myopia=1].")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per variant (0..N-1).")
@click.option("--time-per-run", "seconds", type=float, default=40.0, show_default=True,
              help="Seconds of training per run (the default grid: about 12 minutes with 2 workers).")
@click.option("--steps-per-run", "steps", type=int, default=None,
              help="Train every run for this many steps instead of --time-per-run: equal steps for every variant, "
                   "whatever the machine's load and each objective's cost per step.")
@click.option("--workers", type=int, default=None,
              help="Local worker processes [default: as many as the cores allow].")
@click.option("--threads-per-run", "threads", type=int, default=None,
              help="BLAS / Numba threads of each run; workers x threads must fit the cores [default: cores / workers].")
@click.option("--horizon", type=int, default=3, show_default=True, help="Largest k of the k-step columns.")
@click.option("--out", default=None, metavar="DIR",
              help="Directory for one JSON per finished run and compare.json [default: runs/compare-PROCESS].")
@click.option("--dask", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (scheduler address, e.g. tcp://host:8786) instead of local "
                   "workers; needs pip install 'dask[distributed]'.")
@click.option("--json", "as_json", is_flag=True, help="Print the aggregate as one JSON object instead of the table.")
def compare_cmd(process_spec, grid, seeds, seconds, steps, workers, threads, horizon, out, dask, as_json):
    """Train a grid of variants (architecture x objective) with several seeds, then print one table of
    mean +- spread over seeds: loss gap to the Bayes floor, gap vs NTP (the myopia gap), belief R^2 and
    k-step probe accuracy and KL next to Bayes, with one sentence saying what it shows.

    \b
        tinyseq compare --process mess3
        tinyseq compare --process rrxor --grid transformer:ntp,transformer:mtp=2 --seeds 2 --time-per-run 20

    Every finished run is saved at once under --out; re-running the same command reuses it and trains only
    what is missing (a changed setting reruns). The random-init control is skipped here to keep runs cheap.
    """
    from tinyseq import compare

    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    if seconds <= 0:
        fail(f"--time-per-run must be a positive number of seconds, got {seconds:g}")
    if steps is not None and steps < 1:
        fail(f"--steps-per-run must be a positive integer, got {steps}")
    variants = compare.parse_grid(grid if grid is not None else compare.DEFAULT_GRID)
    proc = tinyseq.process(process_spec)
    if out is None:
        base = os.path.splitext(os.path.basename(proc.name.split(":")[0]))[0] or "process"
        out = os.path.join("runs", f"compare-{base}")
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out {out} is a file, not a directory")

    def progress(ev):
        kind = ev["event"]
        if kind == "plan":
            where = (f"on the Dask cluster at {ev['dask']}" if ev["dask"] else
                     f"{ev['workers']} worker{'s' if ev['workers'] > 1 else ''} x {ev['threads_per_run']} "
                     f"thread{'s' if ev['threads_per_run'] > 1 else ''}")
            msg = f"{ev['runs']} runs ({ev['cached']} already saved in {out}), {ev['todo']} to train {where}"
            if ev["todo"] and ev["workers"] and ev["seconds"]:
                rounds = -(-ev["todo"] // ev["workers"])
                msg += f": about {rounds * (ev['seconds'] + 8) / 60:.0f} min"
            click.echo(msg, err=True)
        elif kind == "finished":
            click.echo(f"[{ev['done']}/{ev['runs']}] {ev['variant']} seed {ev['seed']}: gap {ev['gap_nats']:.2e} "
                       f"nats ({ev['seconds']:.0f} s)", err=True)
        elif kind == "failed":
            click.echo(f"{ev['variant']} seed {ev['seed']} failed: {ev['error']}", err=True)

    result = compare.run_grid(proc, variants, seeds=seeds, seconds=seconds, steps=steps, workers=workers,
                              threads_per_run=threads, out=out, horizon=horizon, dask=dask, callback=progress)
    if as_json:
        emit_json(result)
    else:
        click.echo(compare.format_table(result))
        click.echo(result["sentence"])
    if result["status"] == "interrupted":
        click.echo(f"tinyseq: interrupted; {result['n_finished']} of {result['n_runs']} runs are saved in {out}. "
                   f"Run the same command again to continue (saved runs are not repeated).", err=True)
        sys.exit(130)
    if result["n_failed"]:
        click.echo(f"tinyseq: {result['n_failed']} run(s) failed (see above); re-run to retry them.", err=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    """Entry point of the `tinyseq` console script and of `python cli.py`."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="tinyseq", standalone_mode=False)
    except click.exceptions.Exit as e:  # --help, --version
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("tinyseq: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # usage errors: one line, exit 2
        if debug:
            raise
        ctx_cmd = f" {e.ctx.command_path.split(' ', 1)[1]}" if getattr(e, "ctx", None) and " " in e.ctx.command_path else ""
        click.echo(f"tinyseq{ctx_cmd}: error: {e.format_message()} (see 'tinyseq{ctx_cmd} --help')", err=True)
        sys.exit(2)
    except TinyseqError as e:
        if debug:
            raise
        click.echo(f"tinyseq: error: {e}", err=True)
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        click.echo("tinyseq: error: out of memory; use smaller sizes (--batch, --d-model, --depth)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
