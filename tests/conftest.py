import os
import sys
import traceback
import warnings
from typing import NamedTuple

import numpy as np
import pytest

# keep test runs light on the shared 2-core machine, and importable from a plain checkout
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# the warnings a plain `python cli.py` shows (Python's default filters hide these four kinds)
_HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


class CliResult(NamedTuple):
    """What a `tinyseq` process leaves behind; the field names are subprocess.CompletedProcess's."""
    returncode: int
    stdout: str
    stderr: str


def cli_in_process(args, cwd=None) -> CliResult:
    """Run `tinyseq ARGS` inside this process through click's CliRunner, as a real process would end:
    the exit code of sys.exit (1 and the traceback on stderr for an uncaught exception), stdout, and stderr
    including every warning a real process would print there. A refusal takes milliseconds here; a subprocess
    first spends 0.7-3 s of CPU starting Python and importing NumPy and Numba. What only a real process can
    show (signals, the interpreter's own traceback printing, the shell's exit code) is tested with
    subprocesses in test_robustness.py."""
    import cli
    from click.testing import CliRunner

    from tinyseq.threads import set_blas_threads

    here = os.getcwd()
    with CliRunner().isolation() as (out, err, _), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in _HIDDEN_WARNINGS:
            warnings.filterwarnings("ignore", category=category)
        try:
            os.chdir(cwd or here)
            cli.main(list(args))
            code = 0
        except SystemExit as e:                       # sys.exit(None) is 0; sys.exit("text") prints it, 1
            code = 0 if e.code is None else e.code
            if not isinstance(code, int):
                sys.stderr.write(f"{code}\n")
                code = 1
        except BaseException:                         # what the interpreter does with an uncaught exception
            sys.stderr.write(traceback.format_exc())
            code = 1
        finally:
            os.chdir(here)
            set_blas_threads(1)                       # a command without --threads gives BLAS every core
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    stderr += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return CliResult(code, stdout, stderr)


_COMPILE_TIMES = []


@pytest.fixture
def compile_probe_once(monkeypatch):
    """`tinyseq bench` measures cold and warm Numba compile times in two fresh processes (about 10 s of CPU,
    compiling every kernel into an empty cache). That is a fact about the machine, not about the command:
    the first `bench` of the session measures it for real, later ones reuse its numbers."""
    from tinyseq.lab import bench

    real = bench.compile_times

    def once() -> dict:
        if not _COMPILE_TIMES:
            _COMPILE_TIMES.append(real())
        return dict(_COMPILE_TIMES[0])
    monkeypatch.setattr(bench, "compile_times", once)


def filter_beliefs(T, pi, tokens):  # (V, S, S), (S,), (N, T) -> (N, T, S)
    """The plain forward filter, for stub networks in tests (independent of tinyseq.beliefs): the belief after
    each token, starting from pi; an impossible token keeps the previous belief instead of dividing by 0."""
    tokens = np.asarray(tokens)
    eta = np.broadcast_to(pi, (len(tokens), len(pi))).copy()
    out = np.empty(tokens.shape + (len(pi),))
    for t in range(tokens.shape[1]):
        u = np.einsum("bi,bij->bj", eta, T[tokens[:, t]])
        z = u.sum(axis=1, keepdims=True)
        eta = np.where(z > 0, u / np.where(z > 0, z, 1.0), eta)
        out[:, t] = eta
    return out


def safe_beliefs(proc, tokens):  # (N, T) -> (N, T, S) of a process, by filter_beliefs
    return filter_beliefs(proc.T, proc.stationary, tokens)
