"""`tinyseq exercise check FILE`: load a learner's file on its own, run their backward on tiny float64 problems,
compare every gradient with central finite differences of tinyseq's forward, and say where it is off.

Outcomes: every gradient within gradcheck.REL_TOL -> "ok"; a gradient off, or a backward that still raises
NotImplementedError -> "fail"; a file that cannot be run (syntax error, missing function, an exception,
a wrong number or shape of returned arrays) -> TinyseqError, one line.
"""
from __future__ import annotations

import os
import traceback
import types

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.exercises.catalog import EXERCISES
from tinyseq.gradcheck import EPS, REL_TOL, numerical_grad, rel_err


class NotWritten(Exception):
    """The learner's backward (or a helper it calls, named in args[0]) still raises NotImplementedError."""


def _frames_in(tb, path) -> list:
    """The traceback frames inside the learner's file, outermost first."""
    return [f for f in traceback.extract_tb(tb) if os.path.abspath(f.filename) == os.path.abspath(path)]


def _line_in(tb, path) -> str:
    """' (FILE line N)' for the deepest traceback frame inside the learner's file, else ''."""
    frames = _frames_in(tb, path)
    return f" ({path} line {frames[-1].lineno})" if frames else ""


def _said(e: BaseException, path: str) -> str:
    """'ValueError: message (FILE line N)' in one line, whatever the exception's text holds."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}{': ' + text[0] if text else ''}{_line_in(e.__traceback__, path)}"


def load(path: str):
    """(exercise, module) from the learner's file, run in a fresh namespace (not imported, not on sys.path)."""
    if not os.path.isfile(path):
        raise TinyseqError(f"{path}: no such file; start one with `tinyseq exercise start NAME --to {path}`")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise TinyseqError(f"{path} line {e.lineno}: syntax error: {e.msg}") from None
    module = types.ModuleType("tinyseq_exercise_file")
    module.__file__ = path
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as e:  # the learner's top-level code: any error is theirs, said in one line
        raise TinyseqError(f"{path} cannot be loaded: {_said(e, path)}") from None
    name = module.__dict__.get("EXERCISE")
    if not isinstance(name, str) or name not in EXERCISES:
        raise TinyseqError(f"{path} is not an exercise file (it has no EXERCISE = \"NAME\" line naming one of "
                           f"{', '.join(EXERCISES)}); start one with `tinyseq exercise start NAME --to FILE`")
    ex = EXERCISES[name]
    for fn in ex.to_write:
        if not callable(getattr(module, fn, None)):
            raise TinyseqError(f"{path} has no function {fn}: the exercise '{name}' asks for "
                               f"{', '.join(ex.to_write)} (keep their names and signatures)")
    return ex, module


def _call(ex, module, problem, path):
    """Run the learner's backward on one problem -> (returned value, {input: added to its buffer})."""
    try:
        return problem.run(getattr(module, ex.backward))
    except NotImplementedError as e:
        frames = _frames_in(e.__traceback__, path)
        raise NotWritten(frames[-1].name if frames else ex.backward) from None
    except Exception as e:  # a crash inside the learner's backward: one line with their line number
        raise TinyseqError(f"{ex.backward} raised {_said(e, path)}") from None


def analytic_grads(ex, problem, returned, added) -> dict:
    """{input name: gradient}: the returned arrays (count and shapes checked) and what the buffers received."""
    want = problem.returns
    got = returned if isinstance(returned, (tuple, list)) and len(want) > 1 else (returned,)
    names = ", ".join("d" + n for n in want)
    if returned is None or len(got) != len(want):
        what = "None" if returned is None else f"{len(got)} value(s)"
        raise TinyseqError(f"{ex.backward} returned {what}; it must return {names}")
    grads = {}
    for name, g in zip(want, got):
        shape = problem.inputs[name].shape
        try:
            grads[name] = np.asarray(g, dtype=np.float64)
        except (TypeError, ValueError):
            what = type(g).__name__
            raise TinyseqError(f"{ex.backward} returned d{name} as {what}, not an array of numbers") from None
        if grads[name].shape != shape:
            raise TinyseqError(f"{ex.backward} returned d{name} of shape {grads[name].shape}; {name} has shape {shape}")
    grads.update(added)
    return grads


def compare(name, ana, num, noise_floor, accumulated=False) -> dict:
    """One row: max relative error (differences below the rounding floor count as exact) and the first bad entry."""
    rel = rel_err(ana, num)
    rel = np.where(np.abs(ana - num) < noise_floor, 0.0, rel)
    bad = ~(rel < REL_TOL)                        # catches NaN too
    row = dict(name="d" + name, shape=tuple(num.shape), max_rel_err=float(np.nan_to_num(rel, nan=np.inf).max()),
               max_abs_diff=float(np.nan_to_num(np.abs(ana - num), nan=np.inf).max()), ok=not bad.any())
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad.reshape(-1))), num.shape)
        row.update(index=tuple(int(i) for i in first), expected=float(num[first]), got=float(ana[first]),
                   pattern=_pattern("d" + name, ana, num, accumulated))
    return row


def _pattern(dname, ana, num, accumulated) -> str:
    """A guess at what kind of mistake it is, from the whole tensor (or ''). accumulated: dname is a buffer
    the backward was to add into."""
    if not np.isfinite(ana).all():
        return "it holds NaN or inf"
    if not ana.any() and accumulated:
        return f"nothing was added to {dname}: write `{dname} += ...` (`{dname} = ...` only rebinds a local name)"
    if not ana.any():
        return "it is all zero"
    if np.allclose(ana, -num, rtol=1e-6, atol=1e-9):
        return "every entry has the opposite sign"
    big = np.abs(num) > 1e-6
    if big.any():
        ratio = ana[big] / num[big]
        if np.allclose(ratio, ratio[0], rtol=1e-6) and np.allclose(ana[~big], 0, atol=1e-9):
            return f"every entry is {ratio[0]:.4g} times the right one: a missing or extra factor"
    return ""


def check_case(ex, module, problem, path) -> list[dict]:
    """Rows for one problem: the learner's gradient of every input vs central differences of tinyseq's forward."""
    returned, added = _call(ex, module, problem, path)
    grads = analytic_grads(ex, problem, returned, added)
    _, abs_sum = problem.loss()
    # rounding noise of a central difference, as in gradcheck.check_model: below it, two gradients agree
    noise_floor = max(1e-9, 20 * np.finfo(np.float64).eps * abs_sum / (2 * EPS))
    rows = []
    for name, value in problem.inputs.items():
        num = numerical_grad(lambda: problem.loss()[0], value)
        rows.append(compare(name, grads[name], num, noise_floor, accumulated=name not in problem.returns))
    return rows


def check_file(path: str, seed: int = 0) -> dict:
    """Check a learner's file -> dict(exercise, status "ok" | "fail" | "not written", rows [(case label, row)])."""
    ex, module = load(path)
    rows = []
    for label, build in ex.cases:
        try:
            rows += [(label, row) for row in check_case(ex, module, build(np.random.default_rng(seed)), path)]
        except NotWritten as e:
            return dict(exercise=ex, status="not written", function=e.args[0], case=label, rows=rows)
    return dict(exercise=ex, status="ok" if all(r["ok"] for _, r in rows) else "fail", rows=rows)
