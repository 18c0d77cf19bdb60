"""`tinyseq exercise`: every exercise's reference backward passes, subtly wrong ones (one sign flipped, one term
missing) fail on the tensor they break, the blank template fails, and broken files exit 2 with one line.

Runs in-process (click's CliRunner isolation around cli.main, so the real one-line error path is exercised).
The wrong solutions are made by editing tinyseq's own reference text; which gradients each edit breaks is
worked out from the chain rule by hand, not read from the checker.
"""
import os

import pytest
from click.testing import CliRunner

import cli
from tinyseq.exercises import EXERCISES, template


def run(*args, cwd):
    """(exit code, stdout, stderr) of `tinyseq ARGS` run in-process inside directory cwd."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with CliRunner().isolation() as (out, err, _):
            try:
                cli.main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code
            return code, out.getvalue().decode(), err.getvalue().decode()
    finally:
        os.chdir(old)


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return name


def solution(name):
    return template.learner_file(EXERCISES[name], solution=True)


def failing(out):
    """Gradient names on FAIL rows of the check's table."""
    return {line.split("  ")[0].strip() for line in out.splitlines() if "  FAIL  " in line}


def assert_one_line_error(code, out, err, needle):
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXERCISES))
def test_reference_solution_passes(name, tmp_path):
    code, out, err = run("exercise", "check", write(tmp_path, "s.py", solution(name)), cwd=tmp_path)
    assert code == 0, out + err
    assert "FAIL" not in out and out.strip().endswith("OK")


@pytest.mark.parametrize("name", list(EXERCISES))
def test_blank_template_fails_as_not_written(name, tmp_path):
    assert run("exercise", "start", name, "--to", "mine.py", cwd=tmp_path)[0] == 0
    text = (tmp_path / "mine.py").read_text()
    assert text.count(template.NOT_WRITTEN) == len(EXERCISES[name].to_write)
    code, out, err = run("exercise", "check", "mine.py", cwd=tmp_path)
    assert code == 1 and "not written yet" in out, out + err


def test_half_written_attention_shows_the_written_case_and_fails(tmp_path):
    """window=None written, the window branch still raising: its rows are shown, the check still exits 1."""
    text = solution("attention")
    text = text[:text.index("    # split every (query t, key s) pair")] + "    " + template.NOT_WRITTEN + "\n"
    code, out, err = run("exercise", "check", write(tmp_path, "half.py", text), cwd=tmp_path)
    assert code == 1, out + err
    assert "dv [window=None]  (1, 2, 4, 3)  OK" in out and "[window=1]" not in out.split("FAIL,")[0]
    assert "attention_backward is not written yet for window=1" in out


# (exercise, reference text, edited text, gradients the edit breaks)
CE = {"dlogits [scale=None]", "dlogits [scale=0.5]"}
WRONG = [
    # sign flipped
    ("cross_entropy", "targets[..., None], -1) - 1, -1)", "targets[..., None], -1) + 1, -1)", CE),
    ("layernorm", "dx = dnorm - dnorm.mean(", "dx = dnorm + dnorm.mean(", {"dx"}),
    ("attention", "dv = att.swapaxes(-1, -2) @ dout", "dv = -att.swapaxes(-1, -2) @ dout", {"dv [window=None]"}),
    ("attention", "dk_far = ((dscores * far)", "dk_far = -((dscores * far)", {"dk_far [window=1]"}),
    ("mlp", "dW += x2.T @ d2", "dW -= x2.T @ d2", {"dW [act=relu]", "dW [act=gelu]"}),
    ("rnn_cell", "da = dh * (1.0 - h * h)", "da = dh * (1.0 + h * h)", {"dxp", "dh_prev", "dW_hh", "db_hh"}),
    ("gru_cell", "dz = dh * (h_prev - n)", "dz = dh * (n - h_prev)", {"dxp", "dh_prev", "dW_hh", "db_hh"}),
    ("lstm_cell", "dg * (1.0 - g * g)", "dg * (1.0 + g * g)", {"dxp", "dh_prev", "dW_hh", "db_hh"}),
    # a term missing
    ("cross_entropy", "targets[..., None], -1) - 1, -1)", "targets[..., None], -1), -1)", CE),
    ("cross_entropy", "dlogits *= (1.0 / N) if scale is None else scale", "dlogits *= 1.0 / N", {"dlogits [scale=0.5]"}),
    ("layernorm", " - norm * (dnorm * norm).mean(axis=-1, keepdims=True)", "", {"dx"}),
    ("attention", "dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))", "dscores = att * datt",
     {"dq [window=None]", "dk [window=None]", "dq [window=1]", "dk [window=1]", "dk_far [window=1]"}),
    # off by one: the window must keep t - s <= window near, not t - s < window
    ("attention", "near = (t_minus_s <= window)", "near = (t_minus_s < window)",
     {"dk [window=1]", "dv [window=1]", "dk_far [window=1]", "dv_far [window=1]"}),
    ("mlp", "dout * (0.5 * (1.0 + th) + 0.5 * x", "dout * (0.5 * x",
     {"dx [act=gelu]", "dW [act=gelu]", "db [act=gelu]"}),
    ("rnn_cell", "    db_hh += da.sum(axis=0)", "", {"db_hh"}),
    ("gru_cell", "    dh_prev += dhp @ W_hh", "", {"dh_prev"}),
    ("lstm_cell", "dc = dc + dh * o", "dc = dh * o", {"dxp", "dh_prev", "dc_prev", "dW_hh", "db_hh"}),
    # the accumulation convention: `dw = ...` rebinds a local name and leaves the caller's buffer alone
    ("layernorm", "dw += (dout * norm)", "dw = (dout * norm)", {"dw"}),
]


@pytest.mark.parametrize("name, old, new, broken", WRONG, ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG)])
def test_subtly_wrong_solution_fails_on_the_tensor_it_breaks(name, old, new, broken, tmp_path):
    text = solution(name)
    assert text.count(old) == 1
    code, out, err = run("exercise", "check", write(tmp_path, "w.py", text.replace(old, new)), cwd=tmp_path)
    assert code == 1, out + err
    assert failing(out) == broken, out
    hinted = {line.split(" is off first at index")[0][len("hint: "):] for line in out.splitlines()
              if line.startswith("hint: ")}
    assert hinted == broken, out
    assert "expected" in out and "got" in out


def test_rebinding_a_gradient_buffer_is_named_in_the_hint(tmp_path):
    text = solution("gru_cell").replace("dW_hh += dhp.T @ h_prev", "dW_hh = dhp.T @ h_prev")
    out = run("exercise", "check", write(tmp_path, "w.py", text), cwd=tmp_path)[1]
    assert failing(out) == {"dW_hh"} and "nothing was added to dW_hh: write `dW_hh += ...`" in out


def test_sign_hint_says_opposite_sign_and_the_entry(tmp_path):
    """The hint's expected/got are the finite difference and the learner's entry: a flipped sign shows as -got."""
    text = solution("attention").replace("dv = att.swapaxes(-1, -2) @ dout", "dv = -att.swapaxes(-1, -2) @ dout")
    out = run("exercise", "check", write(tmp_path, "w.py", text), cwd=tmp_path)[1]
    hint = next(line for line in out.splitlines() if line.startswith("hint: dv [window=None]"))
    expected = float(hint.split("expected ")[1].split(" ")[0])
    got = float(hint.split("got ")[1].split(";")[0])
    assert got == pytest.approx(-expected, rel=1e-5) and "opposite sign" in hint


# ----------------------------------------------------------------------------------------------------------
# files that cannot be run: exit 2, one line, no traceback
RETURN_SLICED = """
_reference = {fn}
def {fn}(*args, **kwargs):
    out = _reference(*args, **kwargs)
    return tuple(o[..., :1] for o in out) if isinstance(out, tuple) else out[..., :1]
"""
RETURN_TEXT = """
_reference = {fn}
def {fn}(*args, **kwargs):
    out = _reference(*args, **kwargs)
    return tuple("text" for o in out) if isinstance(out, tuple) else "text"
"""
RETURN_NOTHING = """
_reference = {fn}
def {fn}(*args, **kwargs):
    _reference(*args, **kwargs)
"""


@pytest.mark.parametrize("name", list(EXERCISES))
def test_broken_files_exit_2_with_one_line(name, tmp_path):
    ex = EXERCISES[name]
    text = solution(name)
    fn = ex.backward
    lines = text.splitlines()
    bad_line = next(i for i, line in enumerate(lines) if line.startswith(f"def {fn}(")) + 2   # 1-based, in the body
    lines.insert(bad_line - 1, "    dx = (")
    cases = [("\n".join(lines), f"line {bad_line}: syntax error"),
             (text.replace(f"def {fn}(", f"def {fn}_v2("), f"has no function {fn}"),
             (text + RETURN_SLICED.format(fn=fn), "of shape"),
             (text + RETURN_NOTHING.format(fn=fn), "returned None"),
             (text + RETURN_TEXT.format(fn=fn), "not an array of numbers"),
             (text.replace(f'EXERCISE = "{name}"', 'EXERCISE = "nope"'), "is not an exercise file")]
    for source, needle in cases:
        assert_one_line_error(*run("exercise", "check", write(tmp_path, "b.py", source), cwd=tmp_path), needle)


def test_an_exception_in_the_backward_names_its_line(tmp_path):
    text = solution("layernorm")
    lines = text.splitlines()
    where = next(i for i, line in enumerate(lines) if line.strip() == "dnorm = dout * w")
    lines[where] = lines[where].replace("dout * w", "dout @ np.ones((7, 7))")
    code, out, err = run("exercise", "check", write(tmp_path, "b.py", "\n".join(lines)), cwd=tmp_path)
    assert_one_line_error(code, out, err, f"b.py line {where + 1}")
    assert "ValueError" in err


def test_missing_file_and_plain_python_file(tmp_path):
    assert_one_line_error(*run("exercise", "check", "nothere.py", cwd=tmp_path), "no such file")
    write(tmp_path, "plain.py", "x = 1\n")
    assert_one_line_error(*run("exercise", "check", "plain.py", cwd=tmp_path), "is not an exercise file")


# ----------------------------------------------------------------------------------------------------------
def test_start_refuses_to_overwrite_and_unknown_names(tmp_path):
    assert run("exercise", "start", "gru_cell", "--to", "g.py", cwd=tmp_path)[0] == 0
    write(tmp_path, "g.py", "my work\n")
    assert_one_line_error(*run("exercise", "start", "gru_cell", "--to", "g.py", cwd=tmp_path), "--force")
    assert (tmp_path / "g.py").read_text() == "my work\n"
    assert run("exercise", "start", "gru_cell", "--to", "g.py", "--force", cwd=tmp_path)[0] == 0
    assert "def gru_cell_backward(" in (tmp_path / "g.py").read_text()
    code, out, err = run("exercise", "start", "transformer", "--to", "t.py", cwd=tmp_path)
    assert_one_line_error(code, out, err, "unknown exercise 'transformer'")
    assert all(name in err for name in EXERCISES)
    assert not (tmp_path / "t.py").exists()


def test_list_names_every_exercise_and_what_it_mirrors(tmp_path):
    code, out, _ = run("exercise", "list", cwd=tmp_path)
    assert code == 0
    for ex in EXERCISES.values():
        row = next(line for line in out.splitlines() if line.startswith(ex.name + " "))
        assert ex.backward in row and ex.source in row


def test_template_keeps_signature_shapes_and_forward_was_but_not_the_derivation():
    """The blank backward keeps what the learner is given (signature with shapes, 'forward was' lines) and
    drops every line of the answer: no code, no text after a 'forward was' arrow."""
    from tinyseq.nn import ops, recurrent

    blank = template.blank_block(ops, "layernorm_backward")
    assert blank.splitlines()[0].startswith("def layernorm_backward(dw, db, dout, x, w, mean, rstd):  # (C,) +=")
    assert "# forward was: norm = (x - mean) * rstd ; out = norm * w + b" in blank
    assert "->" not in blank.split("\n", 1)[1] and "dnorm" not in blank and "+=" not in blank.split("\n", 1)[1]
    lstm = template.blank_block(recurrent, "lstm_cell_backward")
    assert "#   -> dxp (B, 4H), dh_prev (B, H), dc_prev (B, H)" in lstm       # a shape line continued, kept
    assert "# forward was: h = o * tanh(c)\n" in lstm and "do = dh" not in lstm


@pytest.mark.parametrize("name", list(EXERCISES))
def test_blank_bodies_hold_only_a_docstring_and_the_raise(name):
    import ast

    ex = EXERCISES[name]
    for fn in ex.to_write:
        node = ast.parse(template.blank_block(ex.module, fn)).body[0]
        body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert len(body) == 1 and isinstance(body[0], ast.Raise), fn
        assert ast.unparse(node.args) == ast.unparse(ast.parse(template.solution_block(ex.module, fn)).body[0].args)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_learner_file_is_self_contained(name):
    """Every name the file's functions read is defined in the file or a builtin: no helper was left out."""
    import ast
    import builtins

    for solution in (False, True):
        tree = ast.parse(template.learner_file(EXERCISES[name], solution=solution))
        top = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        top |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
        top |= {(a.asname or a.name) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            names = [n for n in ast.walk(fn) if isinstance(n, ast.Name)]
            local = {a.arg for a in fn.args.args} | {n.id for n in names if isinstance(n.ctx, ast.Store)}
            free = {n.id for n in names if isinstance(n.ctx, ast.Load)} - local - top - set(dir(builtins))
            assert not free, (fn.name, free)


def test_window_oracle_is_attention_forward_when_the_copies_equal_the_originals():
    """The forward that defines dk_far, dv_far is tinyseq's attention when k_far = k and v_far = v, for every window."""
    import numpy as np

    from tinyseq.exercises.catalog import attention_split_forward
    from tinyseq.nn import ops

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    for window in range(5):
        assert np.allclose(attention_split_forward(q, k, v, k, v, window), ops.attention_forward(q, k, v)[0],
                           rtol=0, atol=1e-13)


def test_required_exercises_exist():
    assert {"cross_entropy", "layernorm", "attention", "mlp", "gru_cell", "lstm_cell"} <= set(EXERCISES)
