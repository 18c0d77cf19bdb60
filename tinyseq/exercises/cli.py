"""`tinyseq exercise list | start | check`: the commands parse options, call the package and print.

Exit codes: 0 every gradient OK; 1 a gradient is off or the backward is not written yet; 2 (one line, from
TinyseqError) a file that cannot be written or run.
"""
from __future__ import annotations

import os
import sys

import click

from tinyseq.errors import TinyseqError
from tinyseq.exercises import checker, template
from tinyseq.exercises.catalog import EXERCISES


def _exercise(name: str):
    if name not in EXERCISES:
        raise TinyseqError(f"unknown exercise '{name}': choose one of {', '.join(EXERCISES)}")
    return EXERCISES[name]


@click.group("exercise")
def exercise_group():
    """Backward-pass exercises: the forward is given, you write the backward, a check names what is off."""


@exercise_group.command("list")
def list_cmd():
    """The exercises, what each asks for, and the tinyseq code it mirrors."""
    from tinyseq.report import tabulate

    rows = [(ex.name, ex.about, ex.mirrors) for ex in EXERCISES.values()]
    click.echo(tabulate(rows, headers=["exercise", "what you write", "mirrors"]))
    click.echo("\nStart one with `tinyseq exercise start NAME --to FILE`, then `tinyseq exercise check FILE`.")


@exercise_group.command("start")
@click.argument("name")
@click.option("--to", "path", default=None, metavar="FILE", help="File to write [default: exercise_NAME.py].")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--solution", is_flag=True, help="Write tinyseq's reference backward instead of a blank one.")
def start_cmd(name, path, force, solution):
    """Write a file with exercise NAME: the forward given, the backward to write."""
    ex = _exercise(name)
    path = path or f"exercise_{name}.py"
    if os.path.exists(path) and not force:
        raise TinyseqError(f"{path} exists; pass --force to overwrite it, or choose another file with --to")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(template.learner_file(ex, solution=solution))
    except OSError as e:
        raise TinyseqError(f"cannot write {path}: {e.strerror}") from None
    todo = "compare it with yours" if solution else f"write {', '.join(ex.to_write)}"
    click.echo(f"wrote {path}: {todo}, then run `tinyseq exercise check {path}`")


@exercise_group.command("check")
@click.argument("path", metavar="FILE")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random inputs and upstream gradient.")
def check_cmd(path, seed):
    """Check the backward in FILE against central finite differences (exit 0 all OK, 1 a FAIL)."""
    result = checker.check_file(path, seed=seed)
    click.echo(format_result(result))
    if result["status"] != "ok":
        sys.exit(1)


def format_result(result) -> str:
    """The check's table and one hint per FAIL (for the cases that ran), then a closing line."""
    ex, checked = result["exercise"], result["rows"]
    lines = _table(ex, checked) if checked else []
    n_bad, n = sum(not r["ok"] for _, r in checked), len(checked)
    if result["status"] == "not written":
        case = f" for {result['case']}" if result["case"] and checked else ""
        lines.append(f"{ex.name}: FAIL, {result['function']} is not written yet{case} (it raises "
                     f"NotImplementedError); write it and check again")
    elif n_bad:
        lines.append(f"{ex.name}: {n_bad} of {n} gradients FAIL")
    else:
        lines.append(f"{ex.name}: {'all ' + str(n) + ' gradients are' if n > 1 else 'the gradient is'} OK")
    return "\n".join(lines)


def _table(ex, checked) -> list[str]:
    """Header sentence, one row per gradient (OK / FAIL, errors), and the hints of the FAIL rows."""
    from tinyseq.report import tabulate

    rows, hints = [], []
    for label, r in checked:
        name = f"{r['name']} [{label}]" if label else r["name"]
        rows.append((name, str(r["shape"]), "OK" if r["ok"] else "FAIL", f"{r['max_rel_err']:.1e}",
                     f"{r['max_abs_diff']:.1e}"))
        if not r["ok"]:
            hint = (f"hint: {name} is off first at index {r['index']}: expected {r['expected']:.6g} "
                    f"(finite differences), got {r['got']:.6g}")
            hints.append(hint + (f"; {r['pattern']}" if r["pattern"] else ""))
    lines = [f"{ex.name}: your {ex.backward} vs central finite differences of the forward in {ex.source} "
             f"(float64, random upstream gradient, tolerance {checker.REL_TOL:g})",
             tabulate(rows, headers=["gradient", "shape", "check", "max rel err", "max abs diff"]), *hints]
    if any(r["max_rel_err"] == 0 for _, r in checked):
        lines.append("(a rel err of 0: every difference is below the rounding noise of the finite differences)")
    return lines
