"""Output fits the terminal it is shown on: at COLUMNS=80 and COLUMNS=120 no line that any table-printing command
writes (stdout or stderr) is longer than the width; protocols are short unless --verbose."""
import pytest
from click.testing import CliRunner

import cli
import tinyseq
from tinyseq import report
from tinyseq.lab import compare
from tinyseq.progress import compare_progress

TINY = ["--d-model", "8", "--n-layers", "1", "--n-heads", "2", "--d-head", "4", "--d-mlp", "16", "--n-ctx", "6"]


def run(args, columns):  # -> every line the command printed (stdout and stderr), after checking it succeeded
    result = CliRunner().invoke(cli.cli, args, env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def assert_fits(lines, columns):
    too_long = [(len(line), line) for line in lines if len(line) > columns]
    assert not too_long, f"{len(too_long)} lines longer than {columns}: {too_long[:3]}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(["train", "--process", "mess3", "--steps", "20", "--threads", "1", "--out", str(out)] + TINY, 80)
    return str(out / "model.npz")


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("args", [["processes"], ["process", "show", "mess3"], ["process", "show", "nond"],
                                  ["gradcheck", "--model", "gru"]], ids=["processes", "mess3", "nond", "gradcheck"])
def test_process_commands_fit_the_width(args, columns):
    assert_fits(run(args, columns), columns)


@pytest.mark.parametrize("columns", [80, 120])
def test_train_and_probe_fit_the_width(checkpoint, tmp_path, monkeypatch, columns):
    monkeypatch.chdir(tmp_path)                  # short relative paths: a path longer than the width stays whole
    assert_fits(run(["train", "--process", "rrxor", "--steps", "10", "--threads", "1", "--out", "run"]
                    + TINY, columns), columns)
    lines = run(["probe", checkpoint, "--threads", "1"], columns)
    assert_fits(lines, columns)
    assert any("--verbose: the whole protocol" in line for line in lines)


def test_verbose_prints_the_whole_protocol_wrapped(checkpoint):
    lines = run(["probe", checkpoint, "--threads", "1", "--verbose"], 80)
    assert_fits(lines, 80)
    text = " ".join(lines)
    assert "--verbose: the whole protocol" not in text
    assert "belief route = the belief probe of the same hook times the exact k-step map" in text


@pytest.mark.parametrize("columns", [80, 120])
def test_demo_fits_the_width(tmp_path, monkeypatch, columns):
    monkeypatch.chdir(tmp_path)
    lines = run(["demo", "--process", "z1r", "--time", "1", "--threads", "1", "--out", "run"] + TINY,
                columns)
    assert_fits(lines, columns)
    assert any("\u2800" <= ch <= "\u28ff" for line in lines for ch in line)      # the braille picture is there


@pytest.fixture(scope="module")
def compared(tmp_path_factory):  # a finished compare grid on tiny models, trained in this process
    tiny = {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_head": 4, "d_mlp": 16, "n_ctx": 6}
    progress = []
    result = compare.run_grid(tinyseq.process("mess3"), compare.parse_grid("transformer:ntp,transformer:mtp=2"),
                              seeds=2, steps=3, workers=1, threads_per_run=1, horizon=4,
                              out=str(tmp_path_factory.mktemp("compare")), model_overrides={"transformer": tiny},
                              callback=compare_progress("runs/compare-mess3", progress.append))
    return result, progress


@pytest.mark.parametrize("columns", [80, 120])
def test_compare_fits_the_width(compared, monkeypatch, columns):
    """What `tinyseq compare` prints: its progress lines, the tables and the sentence (as cli.compare_cmd)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    result, progress = compared
    lines = progress + compare.format_table(result).splitlines() + report.wrap(result["sentence"]).splitlines()
    assert_fits(lines, columns)
    assert len(report.wrap(result["sentence"]).splitlines()) > 1          # the sentence was long: it got wrapped
