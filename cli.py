"""tinyseq command line: parses options, calls the package, prints what report.py formats.

Every user mistake ends as one line on stderr and exit code 2, never a traceback (`--debug` shows one).
"""
from __future__ import annotations

import json
import os
import sys

import click

import tinyseq
from tinyseq import gradcheck, pathstar, plot, report, runs
from tinyseq.analysis import SHUFFLE_PERMUTATIONS, analyse
from tinyseq.beliefs import catalogue_summary, process_facts
from tinyseq.errors import TinyseqError
from tinyseq.exercises.cli import exercise_group
from tinyseq.lab import bench, compare
from tinyseq.live import LiveView
from tinyseq.models import KINDS, config_to_dict, model_options
from tinyseq.pathstar import PathStar
from tinyseq.progress import Progress, compare_progress
from tinyseq.runs import flag
from tinyseq.threads import set_threads, static_threads
from tinyseq.train import train, train_options


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
@click.option("--depth", default=None, type=int,
              help="Largest block length L for h(L) and the MSP [default: 10, or the deepest MSP level that fits].")
@click.option("--horizon", default=5, show_default=True, type=int, help="Largest k for k-step-ahead accuracy.")
@click.option("--context", default=None, type=int,
              help="Context length the k-step accuracy conditions on [default: 10, or the deepest MSP level that fits].")
@click.option("--rank-horizon", default=3, show_default=True, type=int,
              help="Future length n for the observability ranks (k-step marginals and joint futures, k <= n).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def process_show_cmd(spec, depth, horizon, context, rank_horizon, as_json):
    """Exact facts about process SPEC (a catalogue name like mess3:x=0.15,a=0.6, a product like mess3*z1r, or a
    JSON file)."""

    proc = tinyseq.process(spec)
    if isinstance(proc, PathStar):
        _refuse_given(("depth", "horizon", "context", "rank_horizon"), proc)
        facts = pathstar.task_facts(proc)
        return emit_json(facts) if as_json else click.echo(report.task_report(facts))
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
def _model_kinds() -> list[str]:
    return list(KINDS)


def _model_flags(f):
    """One click option per model config field (all kinds share one set; d_vocab comes from the process)."""

    for opt in reversed(model_options()):
        defaults = opt["default"]
        by_value: dict = {}
        for kind, value in defaults.items():
            by_value.setdefault(value, []).append(kind)
        shown = "; ".join(f"{'/'.join(ks) if len(by_value) > 1 or len(ks) < len(KINDS) else 'all'} {v}"
                          for v, ks in by_value.items())
        only = "" if len(opt["kinds"]) == len(KINDS) else f"{'/'.join(opt['kinds'])} only. "
        f = click.option(flag(opt["name"]), opt["name"], type=opt["type"], default=None,
                         metavar=opt["type"].__name__.upper(), help=f"{only}{opt['help']} [default: {shown}]")(f)
    return f


def _train_flags(f):
    """One click option per TrainConfig field."""

    for opt in reversed(train_options()):
        if opt["type"] is tuple:
            f = click.option(flag(opt["name"]), opt["name"], type=(float, float), default=None,
                             help=f"{opt['help']} [default: {' '.join(map(str, opt['default']))}]")(f)
            continue
        shown = "" if opt["default"] is None else f" [default: {opt['default']}]"
        metavar = "auto|N" if opt["name"] == "threads" else opt["type"].__name__.upper()
        f = click.option(flag(opt["name"]), opt["name"], type=opt["type"], default=None,
                         metavar=metavar, help=f"{opt['help']}{shown}")(f)
    return f


@cli.command("train")
@click.option("--process", "process_spec", default=None, metavar="SPEC",
              help="Process to learn: a catalogue name (mess3, mess3:x=0.15,a=0.6), a product (mess3*z1r) or a JSON "
                   "file.")
@click.option("--model", "kind", type=click.Choice(_model_kinds()), default=None,
              help="Network to train [default: transformer].")
@click.option("--preset", type=click.Choice(["paper"]), default=None,
              help="paper: the published transformer for mess3 or rrxor (Shai et al. 2024) with training settings "
              "per process (rrxor: lr 1e-3, batch 64, warmup 250, betas 0.9 0.95, for a 40 s budget).")
@_model_flags
@_train_flags
@click.option("--out", default=None, metavar="DIR", help="Directory for model.npz and summary.json (created).")
@click.option("--resume", default=None, metavar="DIR", help="Continue the interrupted run saved in DIR.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object at the end.")
@click.option("--live", is_flag=True, help="On a terminal, redraw the belief simplex a probe reads from the network "
              "every second or two while it trains.")
def train_cmd(process_spec, kind, preset, out, resume, overwrite, as_json, live, **options):
    """Train a transformer or an RNN on a process and measure its loss against the Bayes floor h(L).

    The defaults reach within 0.25% of the floor on mess3 in about 10-20 s on 2 cores:

        tinyseq train --process mess3 --out runs/mess3

    Progress goes to stderr; the run ends with model.npz (load it with tinyseq.load) and summary.json.
    Ctrl-C saves a checkpoint; continue with --resume DIR. --steps and --tokens runs resume bit-exactly;
    --time runs follow the wall clock and cannot.

    --objective mtp:N trains N heads (head i predicts x_{t+i}); --myopia M cuts the gradient from the loss at t
    into positions before t-M. Evaluation always uses head 1 against the next-token floor.
    """

    given_model, given_train = runs.split_options(options)
    if resume is not None:
        proc, model, config, state, out = runs.resume_run(resume, process_spec, kind, preset, out, given_model,
                                                          given_train)
        _is_task(proc)                     # --live draws beliefs: refused for a path-star run
    else:
        if process_spec is not None:
            _is_task(tinyseq.process(process_spec))     # before new_run touches the disk
        proc, model, config, out = runs.new_run(process_spec, kind, preset, given_model, given_train, out, overwrite)
        state = None
    summary = _train_with_progress(proc, model, config, out, state, live=live)
    if summary["status"] == "interrupted":
        where = (f"checkpoint of step {summary['steps']} saved to {summary['checkpoint']}" if summary["checkpoint"]
                 else "no checkpoint saved")
        click.echo(f"tinyseq: interrupted; {where}; continue with: tinyseq train --resume {out}", err=True)
        if as_json:
            emit_json(summary)
        sys.exit(130)
    emit_json(summary) if as_json else click.echo(report.train_summary(summary))


def _train_with_progress(proc, model, config, out, state=None, live=False) -> dict:

    progress = LiveView(model, proc) if live else Progress()   # LiveView is plain lines off a terminal
    try:
        return train(proc, model, config, out=out, callback=progress, state=state)
    finally:
        progress.close()


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
@click.option("--end-to-end", "end_to_end", is_flag=True,
              help="Instead: the running `train --preset paper` command (sampling and evaluation included; rate "
                   "between a short and a long run) against PyTorch's training loop on pre-sampled batches.")
@click.option("--e2e-steps", default="50,550", show_default=True,
              help="--end-to-end: the short and the long run's --steps.")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="--busy, --end-to-end: interleaved repeats (medians).")
@click.option("--presets", default="default,paper", show_default=True,
              help="--busy: the models, comma-separated: default (train's default) and/or paper (--preset paper).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_cmd(models, batches, threads_, quick, no_torch, busy, busy_time, end_to_end, e2e_steps, repeats, presets,
              as_json):
    """Training tokens/s of tinyseq (Numba and NumPy backends) vs PyTorch eager, interleaved, medians.

    --busy measures the thread policy instead: steps/s of whole `tinyseq train` runs, idle and with one busy core.
    --end-to-end measures the running train command (mess3 published model) against PyTorch's training loop."""
    if end_to_end:
        _bench_end_to_end(_int_list(batches, "batches"), _int_list(threads_, "threads"),
                          _int_list(e2e_steps, "e2e-steps"), repeats, as_json)
        return

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


def _bench_end_to_end(batches, threads, steps, repeats, as_json) -> None:
    if len(steps) != 2:
        fail(f"--e2e-steps takes two step counts, short and long, got {steps}: e.g. --e2e-steps 50,550")

    def progress(ev):
        torch_rate = f", PyTorch {ev['torch'] / 1e3:.1f}k" if "torch" in ev else ""
        click.echo(f"batch {ev['batch']} threads {ev['threads']} repeat {ev['repeat'] + 1}: tinyseq train "
                   f"{ev['tinyseq'] / 1e3:.1f}k tok/s{torch_rate} (other load {ev['other_load']:.2f})", err=True)

    result = bench.end_to_end(batches=batches, threads=threads, steps=tuple(steps), repeats=repeats,
                              callback=progress)
    click.echo(json.dumps(result, indent=2) if as_json else bench.format_end_to_end(result))


# ---------------------------------------------------------------------------------------------------------
# probe and demo: the answer on screen (tables of tinyseq.analysis, formatted by report.py)
def _analysis_options(f):
    """Options shared by probe and demo: how the trained network is measured."""
    f = click.option("--verbose", is_flag=True,
                     help="Print the whole protocol of each table (the --json output always has it).")(f)
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


def _run_analysis(model, proc, horizon, seed, eval_set, weighting, permutations=None):
    return analyse(model, proc, horizon=horizon, seed=seed, eval_set=eval_set, weighting=weighting, points=True,
                   permutations=permutations)


def _print_analysis(a, png, as_json, extra=None, before=(), verbose=False):
    """Tables and picture (or JSON) of one analysis; the picture's points never go into the JSON."""
    pic = a["picture"]
    true, probed = pic.pop("true"), pic.pop("probed")
    if png:
        plot.simplex_png(png, true, probed, titles=("true beliefs", f"probed from {pic['label']}"))
        pic["png"] = png
    if as_json:
        emit_json({**(extra or {}), **report.describe(a)})
        return
    width, height = plot.picture_size(report.term_width())
    picture = plot.simplex_picture(true, probed, titles=("true beliefs", f"probed: {pic['label']}"),
                                   width=width, height=height)
    for text in before:
        click.echo(text)
    click.echo(report.probe_report(a, picture, verbose))
    if png:
        click.echo(f"picture written to {png}")


HMM_ONLY = ("eval_set", "weighting", "horizon", "png", "permutations", "shuffle", "live")   # belief-only options


def _is_task(proc) -> bool:
    """A path-star task (paths and the plan are measured) rather than a hidden Markov process (beliefs);
    an option that applies only to the other kind is one line, exit 2."""
    task = isinstance(proc, PathStar)
    if task:
        _refuse_given(HMM_ONLY, proc)
    return task


def _refuse_given(names, proc) -> None:
    """Options given on the command line that do not apply to `proc`: one line, exit 2."""
    ctx = click.get_current_context()
    for name in names:
        if name in ctx.params and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            fail(f"{flag(name)} applies to hidden Markov processes, not to {proc.label}: drop it")


def _probe_paths(model, proc, seed, as_json, extra) -> None:
    a = runs.probe_paths(model, proc, seed)
    if as_json:
        emit_json({**extra, **a, "sentence": report.paths_sentence(a)})
    else:
        click.echo(report.wrap(f"{extra['checkpoint']}: a {model.kind} trained on {proc.label}"))
        click.echo(report.paths_report(a))


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
@click.option("--threads", default="auto", show_default=True, metavar="auto|N",
              help="BLAS threads: auto (the cores other programs leave free) or a count.")
@click.option("--permutations", type=int, default=SHUFFLE_PERMUTATIONS, show_default=True, metavar="N",
              help="Shuffle control (processes whose next token sees only part of the belief): permutations of "
                   "the unseen part behind its p-value.")
def probe_cmd(checkpoint, process_spec, horizon, eval_set, weighting, png, as_json, verbose, seed, threads,
              permutations):
    """What a saved network holds: belief-state recovery per layer (with random-init, shuffled-label and
    output controls), the shuffle control where the next token sees only part of the belief, the k-step-ahead
    table against Bayes, and the belief simplex.

    \b
        tinyseq probe runs/demo-mess3-transformer/model.npz
    """
    if permutations < 1:
        fail(f"--permutations must be at least 1, got {permutations}: e.g. --permutations {SHUFFLE_PERMUTATIONS}")
    _check_png(png)
    set_threads(static_threads(threads))
    path, model, proc = runs.load_for_probe(checkpoint, process_spec)
    extra = {"checkpoint": path, "model": config_to_dict(model.config)}
    if _is_task(proc):
        return _probe_paths(model, proc, seed, as_json, extra)
    a = _run_analysis(model, proc, horizon, seed, eval_set, weighting, permutations)
    said = report.wrap(f"{path}: a {model.kind} trained on {model.meta.get('process', proc.label)}, probed on "
                       f"{proc.label}")
    _print_analysis(a, png, as_json, extra, before=[said], verbose=verbose)


@cli.command("demo")
@click.option("--process", "process_spec", default="mess3", show_default=True, metavar="SPEC",
              help="Process to learn: a catalogue name (mess3, rrxor, z1r ...) or a JSON file.")
@click.option("--model", "kind", type=click.Choice(["transformer", "rnn", "gru", "lstm"]), default="transformer",
              show_default=True, help="Network to train.")
@click.option("--time", "seconds", type=float, default=11.0, show_default=True,
              help="Seconds of training (11 s reach the published model's belief MSE on an idle 2-core laptop).")
@click.option("--out", default=None, metavar="DIR",
              help="Directory for model.npz and summary.json, replaced on every run [default: runs/demo-PROCESS-MODEL].")
@_analysis_options
@click.option("--seed", type=int, default=0, show_default=True, help="Initial weights, training batches, probe split.")
@click.option("--threads", default="auto", show_default=True,
              help="BLAS threads: auto (timed on the first steps, drops to the free cores when another program "
                   "is busy) or a count.")
@click.option("--no-live", is_flag=True, help="Only the progress line while training, not the live belief simplex.")
@click.option("--shuffle", is_flag=True,
              help=f"Also run the shuffle control ({SHUFFLE_PERMUTATIONS} permutations; rrxor, z1r, nond), as "
                   f"`tinyseq probe` does.")
@_model_flags
def demo_cmd(process_spec, kind, seconds, out, horizon, eval_set, weighting, png, as_json, verbose, seed, threads,
             no_live, shuffle, **model_options):
    """Train a small network on a hidden Markov process, then show what it learned: loss against the Bayes
    floor, the belief state read out of every layer, k-step-ahead predictions, and the belief simplex.

    \b
        tinyseq demo                          mess3, a 2-layer transformer, 11 s of training
        tinyseq demo --process rrxor --model gru --time 30

    Model sizes take the same options as `tinyseq train` (e.g. --d-model 16 --n-layers 1).
    """
    _check_png(png)
    given_model = {k: v for k, v in model_options.items() if v is not None}
    task = _is_task(tinyseq.process(process_spec))     # path-star: paths and the plan instead of beliefs
    proc, model, config, out = runs.demo_run(process_spec, kind, seconds, seed, threads, given_model, horizon, out)
    if not as_json:
        click.echo(report.task_report(pathstar.task_facts(proc)) if task else
                   report.demo_intro(runs.demo_facts(proc, model.config.n_ctx)))
        click.echo(f"\nTraining a {kind} ({model.params.size:,} parameters) for {seconds:g} s; progress on stderr.")
    summary = _train_with_progress(proc, model, config, out, live=not (no_live or task))
    if summary["status"] == "interrupted":
        where = summary["checkpoint"] or "no checkpoint saved"
        click.echo(f"tinyseq: interrupted; checkpoint: {where}; continue with: tinyseq train --resume {out}, "
                   f"then look at it with: tinyseq probe {out}", err=True)
        sys.exit(130)
    path = summary["checkpoint"]
    extra = {"checkpoint": path, "model": config_to_dict(model.config),
             "training": {k: v for k, v in summary.items() if k not in ("loss", "model")}}
    if task:
        if not as_json:
            click.echo("\n" + report.trained_line(summary))
        _probe_paths(tinyseq.load(path), proc, seed, as_json, extra)    # its objective and eval seed too
    else:
        a = _run_analysis(model, proc, horizon, seed, eval_set, weighting, SHUFFLE_PERMUTATIONS if shuffle else None)
        _print_analysis(a, png, as_json, extra, before=["", report.trained_line(summary)], verbose=verbose)
    if not as_json:
        click.echo("\n" + report.wrap(f"checkpoint: {path}") + "\nlook again with:\n  tinyseq probe " + path)


# ---------------------------------------------------------------------------------------------------------
# compare: a grid of variants x seeds, one table (tinyseq/lab/compare.py)
@cli.command("compare")
@click.option("--process", "process_specs", multiple=True, metavar="SPEC",
              help="Process to learn: a catalogue name (mess3, rrxor, z1r ...) or a JSON file; repeat the option "
                   "for several processes in one table [default: mess3].")
@click.option("--grid", default=None, metavar="VARIANTS",
              help="Comma-separated ARCH:OBJECTIVE, ARCH one of transformer, rnn, gru, lstm; OBJECTIVE ntp, "
                   "myopia=M or mtp=N [default: transformer:ntp,transformer:myopia=0,transformer:myopia=1,"
                   "transformer:myopia=3,transformer:mtp=2,transformer:mtp=4,gru:ntp,gru:myopia=0,gru:myopia=1; for "
                   "pathstar: transformer:ntp,transformer:reverse,transformer:teacherless,transformer:mtp=2,gru:ntp,"
                   "gru:reverse].")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per variant (0..N-1).")
@click.option("--steps-per-run", "steps", type=int, default=None,
              help="Steps of training per run, equal for every variant whatever the machine's load [default: per "
                   f"process, {compare.budgets_text()}].")
@click.option("--time-per-run", "seconds", type=float, default=None,
              help="Seconds of training per run instead of a step budget (then slower objectives train fewer steps).")
@click.option("--workers", type=int, default=None,
              help="Local worker processes [default: as many as the cores allow].")
@click.option("--threads-per-run", "threads", type=int, default=None,
              help="BLAS / Numba threads of each run; workers x threads must fit the cores [default: cores / workers].")
@click.option("--horizon", type=int, default=3, show_default=True, help="Largest k of the k-step columns.")
@click.option("--set", "settings", multiple=True, metavar="ARCH.FIELD=VALUE",
              help="A model setting for every run of one architecture, on top of the architecture's defaults and any "
                   "per-process settings (listed under --steps-per-run); repeat for several, e.g. --set "
                   "transformer.n_layers=3 --set gru.hidden=32.")
@click.option("--out", default=None, metavar="DIR",
              help="Directory for one JSON per finished run and compare.json [default: runs/compare-PROCESS; with "
                   "several processes, one subdirectory each].")
@click.option("--dask", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (scheduler address, e.g. tcp://host:8786) instead of local "
                   "workers; needs pip install 'dask[distributed]'.")
@click.option("--json", "as_json", is_flag=True, help="Print the aggregate as one JSON object instead of the table.")
def compare_cmd(process_specs, grid, seeds, steps, seconds, workers, threads, horizon, settings, out, dask, as_json):
    """Train a grid of variants (architecture x objective) with several seeds, then print one table of
    mean +- spread over seeds: loss gap to the Bayes floor, gap vs NTP (the myopia gap), belief R^2 and
    k-step probe accuracy and KL next to Bayes, with one sentence saying what it shows.

    \b
        tinyseq compare --process mess3
        tinyseq compare --process mess3 --process z1r --process rrxor
        tinyseq compare --process rrxor --grid transformer:ntp,transformer:mtp=2 --seeds 2 --steps-per-run 500
        tinyseq compare --process z1r --set transformer.n_layers=1 --set gru.hidden=32

    Every finished run is saved at once under --out; re-running the same command reuses it and trains only
    what is missing (a changed setting reruns). The random-init control is skipped here to keep runs cheap.
    """
    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    if seconds is not None and steps is not None:
        fail("give one budget per run: --steps-per-run or --time-per-run, not both")
    if seconds is not None and seconds <= 0:
        fail(f"--time-per-run must be a positive number of seconds, got {seconds:g}")
    if steps is not None and steps < 1:
        fail(f"--steps-per-run must be a positive integer, got {steps}")
    models = compare.parse_settings(settings)
    procs = [tinyseq.process(spec) for spec in (process_specs or ("mess3",))]
    grids = [compare.parse_grid(grid if grid is not None else compare.default_grid(p)) for p in procs]
    outs = runs.compare_outs(procs, out)
    # every process's runs go to one pool of workers (compare.run_grids), so none waits for another's last run
    planned = [compare.plan_grid(proc, variants, seeds=seeds, seconds=seconds, steps=steps, out=where,
                                 horizon=horizon, model_overrides=models,
                                 callback=compare_progress(where, lambda text: click.echo(text, err=True),
                                                           compare.short_label(proc.label) if len(procs) > 1 else None))
               for proc, variants, where in zip(procs, grids, outs)]
    results = compare.run_grids(planned, workers=workers, threads_per_run=threads, dask=dask)
    _print_compare(results, as_json)


def _print_compare(results, as_json) -> None:
    """The table(s) and sentences of one or several grids (JSON: the one result, or {"processes": [...]})."""
    if as_json:
        emit_json(results[0] if len(results) == 1 else {"processes": results})
    else:
        click.echo(compare.format_table(results))
        for result in results:
            click.echo(report.wrap(result["sentence"]))
    last = results[-1]
    if last["status"] == "interrupted":
        click.echo(f"tinyseq: interrupted; {last['n_finished']} of {last['n_runs']} runs are saved in {last['out']}. "
                   f"Run the same command again to continue (saved runs are not repeated).", err=True)
        sys.exit(130)
    failed = sum(r["n_failed"] for r in results)
    if failed:
        click.echo(f"tinyseq: {failed} run(s) failed (see above); re-run to retry them.", err=True)
        sys.exit(1)


cli.add_command(exercise_group)   # tinyseq exercise list | start | check (tinyseq/exercises/)


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
