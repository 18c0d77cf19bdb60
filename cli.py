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
