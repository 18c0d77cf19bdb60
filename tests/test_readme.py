"""Every example in README.md is run, so the README cannot rot.

`bash` blocks: every line that starts with `tinyseq ` or `python examples/` is run, in order, in one scratch
directory (so a later command finds the run an earlier one wrote); the first as a real process, the other
`tinyseq` commands inside this one (conftest.cli_in_process). Commands whose point is a long budget get
a short one here (the code path is the same; only the numbers differ): see SHORTEN. Lines that install or run
the test suite (pip, pytest) are CI's own two commands and are not repeated here.
`python` blocks: run in the same directory after the bash commands, in one namespace, in order; a block that
imports an optional package (torch, transformer_lens) is skipped when that package is missing.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import cli_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
OPTIONAL = ("torch", "transformer_lens", "matplotlib", "distributed")

# command -> extra arguments that shorten its budget and keep it on one thread (appended; click takes the last
# value of an option). One thread: the default, every core, makes BLAS spin against the other tests' processes
# on a shared machine (measured at load 8: the README's rrxor compare took 166 s on every core, 56 s on one);
# the code path is the same.
SHORTEN = {
    "demo": ["--time", "1", "--threads", "1"],
    "train": ["--threads", "1"],      # a README train command carries its own budget (checked below)
    "probe": ["--threads", "1"],
    # compare: a steps budget, immune to machine load
    "compare": ["--steps-per-run", "60", "--seeds", "1", "--workers", "1", "--threads-per-run", "1"],
    "bench": ["--quick", "--no-torch", "--models", "small", "--batches", "8", "--threads", "1"],
}


def readme_blocks():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def commands():
    out = []
    for lang, body in readme_blocks():
        if lang != "bash":
            continue
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            if (line.startswith("tinyseq ") or line.startswith("python examples/")) and line not in out:
                out.append(line)          # a command the README repeats (tour, then its section) runs once
    return out


def shortened(argv):
    if argv[0] != "tinyseq":
        return argv
    cmd = argv[1] if len(argv) > 1 else ""
    extra = list(SHORTEN.get(cmd, []))
    if cmd == "train" and "--time" in argv:
        argv = list(argv)
        argv[argv.index("--time") + 1] = "1"
    elif cmd == "train" and not any(a in argv for a in ("--steps", "--tokens")):
        extra += ["--steps", "30"]
    if cmd == "compare" and "--grid" not in argv:
        extra += ["--grid", "transformer:ntp"]
    if cmd == "probe" and not any("pathstar" in a for a in argv):
        extra += ["--permutations", "20"]     # the shuffle control's loop, fewer times (a path-star probe has none)
    return argv + extra


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    os.makedirs(d / "examples")
    for name in os.listdir(os.path.join(ROOT, "examples")):      # the README's process files
        if name.endswith(".json"):
            with open(os.path.join(ROOT, "examples", name), "rb") as src:
                (d / "examples" / name).write_bytes(src.read())
    return d


def test_readme_has_the_two_commands_first():
    first = readme_blocks()[0]
    lines = [l for l in first[1].splitlines() if l.strip()]
    assert first[0] == "bash" and len(lines) == 2
    assert "pip install" in lines[0] and "tinyseq demo" in lines[0]
    assert "pytest" in lines[1]
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert lines[1].strip() in ci                                   # CI runs exactly the README's tests
    install = lines[0].split("&& tinyseq demo")[0].strip()
    assert install in ci                                            # ... after exactly its install


def test_readme_commands_run(scratch, compile_probe_once):
    """The first command runs as a real process, as typed in a shell; the others run in this process (a Python
    start and Numba load per command would cost more than most of the commands themselves)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TINYSEQ_EXAMPLE_SECONDS="2")
    cmds = commands()
    assert len(cmds) >= 8
    for i, line in enumerate(cmds):
        argv = shortened(shlex.split(line))
        if argv[0] == "tinyseq" and i > 0:
            r = cli_in_process(argv[1:], cwd=str(scratch))
        else:
            full = ([sys.executable, os.path.join(ROOT, "cli.py")] + argv[1:] if argv[0] == "tinyseq"
                    else [sys.executable, os.path.join(ROOT, argv[1])] + argv[2:])
            r = subprocess.run(full, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README command failed: {line}\n{r.stderr[-2000:]}"


def test_readme_python_runs(scratch):
    # after the commands (pytest runs tests in file order), so checkpoints the README mentions exist
    ns = {}
    cwd = os.getcwd()
    os.chdir(scratch)
    try:
        for lang, body in readme_blocks():
            if lang != "python":
                continue
            missing = [m for m in OPTIONAL if re.search(rf"^\s*(import|from) {m}\b", body, re.M)
                       and not _importable(m)]
            if missing:
                continue
            exec(compile(body, "README.md", "exec"), ns)
    finally:
        os.chdir(cwd)


def _importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False
