"""The command line as a user meets it: tables, JSON, and one-line errors with exit code 2.

The commands run in this process (conftest.cli_in_process); `run_cli` starts a real `python cli.py` process, for
the tests whose point is the process itself (exit codes and tracebacks as the shell sees them, signals; see
test_robustness.py)."""
import json
import os
import subprocess
import sys

import pytest

import tinyseq
from conftest import cli_in_process
from tinyseq import beliefs as B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=ROOT):
    """`python cli.py ARGS` as a real process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def assert_one_line_error(r, needle=None):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert lines[0].startswith("tinyseq")
    if needle:
        assert needle in lines[0], lines[0]


def test_version_in_a_real_process():
    r = run_cli("--version")
    assert r.returncode == 0 and tinyseq.__version__ in r.stdout


def test_processes_table_and_json():
    r = cli_in_process(["processes"])
    assert r.returncode == 0
    for name in ("mess3", "rrxor", "z1r", "even", "golden_mean", "nond"):
        assert name in r.stdout
    rows = json.loads(cli_in_process(["processes", "--json"]).stdout)
    by = {row["name"].split(":")[0]: row for row in rows}
    assert by["rrxor"]["msp_states_depth10"] == 36 and by["z1r"]["msp_states_depth10"] == 7
    assert by["rrxor"]["ranks"]["joint_futures"] == 4


def test_process_show_json_matches_library():
    r = cli_in_process(["process", "show", "z1r", "--depth", "6", "--horizon", "3", "--context", "5", "--json"])
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)
    p = tinyseq.process("z1r")
    assert f["name"].startswith("z1r") and f["states"] == 3 and f["vocab"] == 2
    assert f["myopic_entropy_nats"] == pytest.approx(B.myopic_entropies(p, 6).tolist(), abs=1e-12)
    assert f["kstep_bayes_accuracy"] == pytest.approx(B.kstep_bayes_accuracy(p, 5, 3).tolist(), abs=1e-12)
    assert f["msp_states"] == 7 and f["ranks"]["kstep_marginals"] == 3
    assert f["entropy_rate_nats"] == pytest.approx(0.23104906, abs=1e-8)


def test_process_show_table_and_json_file(tmp_path):
    path = tmp_path / "gm.json"
    path.write_text(json.dumps({"name": "gm", "symbols": ["a", "b"], "T": tinyseq.process("golden_mean").T.tolist()}))
    r = cli_in_process(["process", "show", str(path), "--depth", "4"])
    assert r.returncode == 0, r.stderr
    assert "h(L)" in r.stdout and "gm" in r.stdout and "0.666667 bits" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (("process", "show", "nosuch"), "unknown process"),
    (("process", "show", "mess3:x=abc"), "not a number"),
    (("process", "show", "mess3:y=1"), "no parameter"),
    (("process", "show", "mess3", "--depth", "0"), "depth"),
    (("process", "show", "mess3", "--horizon", "-1"), "horizon"),
    (("process", "show", "mess3", "--depth", "abc"), "not a valid integer"),
    (("process", "show", "missing.json"), "does not exist"),
    (("process", "show"), "Missing argument"),
    (("nosuchcommand",), "No such command"),
    (("gradcheck", "--model", "cnn"), "cnn"),
])
def test_bad_input_one_line_exit_2(args, needle):
    assert_one_line_error(cli_in_process(args), needle)


def test_bad_json_file_via_cli(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"T": [[[0.5, 0.4], [0.5, 0.5]]]}')
    assert_one_line_error(cli_in_process(["process", "show", str(path)]), "sums to")


def test_gradcheck_command_passes_for_transformer():
    r = cli_in_process(["gradcheck", "--model", "transformer"])
    assert r.returncode == 0, r.stdout[-2000:]
    assert "FAIL" not in r.stdout and " 0 failed" in r.stdout
