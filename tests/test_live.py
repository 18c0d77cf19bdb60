"""The live simplex (tinyseq/live.py) as a user meets it: through a pseudo-terminal it redraws in place and gives
the cursor back, Ctrl-C leaves the terminal clean, and through a pipe only plain lines appear. No timing asserts:
the redraw interval is set to (almost) zero through TINYSEQ_LIVE_INTERVAL, so every step redraws."""
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np

import tinyseq
from tinyseq import beliefs as B
from tinyseq import live

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--d-model", "8", "--n-layers", "1", "--threads", "1"]
UP = re.compile(r"\x1b\[(\d+)A")
ENV = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="100", LINES="40", TINYSEQ_LIVE_INTERVAL="0", TERM="xterm")


def spawn_on_pty(args):  # -> (Popen, master fd): the command with a terminal as stdin, stdout and stderr
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), *args], stdin=slave, stdout=slave,
                         stderr=slave, cwd=ROOT, env=ENV, close_fds=True)
    os.close(slave)
    return p, master


def read_some(master, seconds) -> bytes:  # what the terminal received within `seconds` ("" once it is closed)
    ready, _, _ = select.select([master], [], [], seconds)
    if not ready:
        return b""
    try:
        return os.read(master, 65536)
    except OSError:          # EIO: the child closed the terminal
        return b""


def read_until(p, master, done=lambda text: False, limit=120.0) -> str:
    """Everything written to the terminal until the child exits or done(text) holds."""
    out, t_end = b"", time.monotonic() + limit
    while time.monotonic() < t_end:
        chunk = read_some(master, 0.2)
        out += chunk
        if done(out.decode("utf-8", "replace")) or (not chunk and p.poll() is not None):
            break
    return out.decode("utf-8", "replace")


def run_on_pty(args) -> tuple:  # -> (exit code, terminal text)
    p, master = spawn_on_pty(args)
    try:
        text = read_until(p, master)
        return p.wait(timeout=60), text
    finally:
        os.close(master)


def plain(text) -> str:  # the text without its escape sequences
    return re.sub(r"\x1b\[[?\d;]*[A-Za-z]", "", text)


def assert_cursor_back(text):
    assert live.HIDE in text, "the live view never hid the cursor (did it draw?)"
    assert text.rfind(live.SHOW) > text.rfind(live.HIDE), "the cursor is left hidden"


def test_train_live_redraws_in_place_and_shows_the_cursor(tmp_path):
    rc, text = run_on_pty(["train", "--process", "mess3", "--steps", "25", "--batch", "32", *TINY,
                           "--out", str(tmp_path / "run"), "--live"])
    assert rc == 0, text
    assert text.count("probe MSE") > 1                      # more than one frame ...
    assert UP.search(text)                                   # ... each drawn over the one before:
    ups = list(UP.finditer(text))                            # up exactly the lines of the frame before
    for a, b in zip(ups, ups[1:]):
        assert text[a.end():b.start()].count("\n") == int(b.group(1))
    assert any("\u2801" <= c <= "\u28ff" for c in text)    # braille dots
    assert_cursor_back(text)
    assert "tokens/s)" in text[text.rfind(live.SHOW):]       # the summary comes after the cursor is back


def test_ctrl_c_mid_run_leaves_the_terminal_clean(tmp_path):
    out = tmp_path / "run"
    p, master = spawn_on_pty(["train", "--process", "mess3", "--steps", "100000", "--batch", "32", *TINY,
                              "--out", str(out), "--live"])
    try:
        text = read_until(p, master, done=lambda t: len(UP.findall(t)) >= 2)
        assert len(UP.findall(text)) >= 2, text                # it is redrawing in place
        p.send_signal(signal.SIGINT)
        text += read_until(p, master)
        rc = p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    assert rc == 130, text
    assert_cursor_back(text)
    tail = text[text.rfind(live.SHOW):]
    assert "tinyseq: interrupted" in tail and f"tinyseq train --resume {out}" in tail.replace("\r\n", "")
    before = plain(text[:text.find("tinyseq: interrupted")])
    assert before.endswith("\n"), repr(before[-80:])         # the message starts on a line of its own


def test_off_a_terminal_only_plain_lines(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--process", "mess3", "--steps",
                        "20", "--batch", "32", "--eval-every", "10", *TINY, "--out", str(tmp_path / "run"), "--live"],
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\r" not in r.stderr
    assert "training a transformer" in r.stderr and "eval step 10:" in r.stderr
    assert "probe MSE" not in r.stderr


def test_a_bad_redraw_interval_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--process", "mess3", "--steps", "5",
                        *TINY, "--out", str(tmp_path / "run"), "--live"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(ENV, TINYSEQ_LIVE_INTERVAL="soon"), timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "TINYSEQ_LIVE_INTERVAL" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_demo_is_live_by_default_and_no_live_turns_it_off(tmp_path):
    small = ["demo", "--time", "0.5", "--n-ctx", "4", *TINY, "--out", str(tmp_path / "demo")]
    rc, text = run_on_pty(small)
    assert rc == 0, text
    assert UP.search(text) and text.count("probe MSE") > 1
    assert_cursor_back(text)
    rc, text = run_on_pty(small + ["--no-live"])
    assert rc == 0, text
    assert "probe MSE" not in text and live.HIDE not in text


# ---------------------------------------------------------------------------------------------------------
# the probe set, against networks whose answer is known
class _FakeNet:
    """A 'network' whose only hook holds given features of the tokens: f(tokens) -> (N, T, D)."""

    def __init__(self, features, n_ctx):
        self.features, self.n_ctx = features, n_ctx

    def activations(self, tokens):
        return {"blocks.0.hook_resid_post": np.asarray(self.features(tokens), dtype=np.float32)}


def test_probe_reads_a_network_that_holds_the_belief_exactly():
    proc = tinyseq.process("mess3")
    ps = live.ProbeSet(proc, 6, n_sequences=100)
    net = _FakeNet(lambda tok: np.concatenate([B.belief_states(proc, tok), np.ones(tok.shape + (1,))], -1), 6)
    probed, mse, hook = ps.measure(net)
    assert hook == "blocks.0.hook_resid_post" and probed.shape == ps.held_true.shape
    assert mse < 1e-10
    np.testing.assert_allclose(probed, ps.held_true, atol=1e-5)


def test_probe_of_features_unrelated_to_the_tokens_does_no_better_than_the_mean():
    proc = tinyseq.process("mess3")
    ps = live.ProbeSet(proc, 6, n_sequences=200)
    rng = np.random.default_rng(3)
    net = _FakeNet(lambda tok: rng.standard_normal(tok.shape + (2,)), 6)
    _, mse, _ = ps.measure(net)
    held = ps.held_true
    assert np.isclose(ps.baseline_mse, np.mean((held - ps.fit_true.mean(axis=0)) ** 2))   # per coordinate
    assert mse > 0.9 * ps.baseline_mse


def test_frame_fits_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "30")
    for name in ("mess3", "rrxor", "even"):                # 3 states, 5 states (PCA), 2 states (a strip)
        proc = tinyseq.process(name)
        net = _FakeNet(lambda tok: B.belief_states(proc, tok), 6)
        view = live.LiveView(net, proc, stream=_Tty(), interval=0.0, n_sequences=60)
        view({"event": "step", "step": 3, "steps": 10, "tokens_per_s": 1e4, "loss": 1.0})
        view.close()
        lines = plain(view.stream.getvalue()).replace("\r", "").split("\n")
        assert len(lines) > 4 and max(len(line) for line in lines) <= 79, name
        assert view.stream.getvalue().endswith(live.SHOW)


class _Tty:
    """A text stream that says it is a terminal."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True

    def getvalue(self):
        return "".join(self.parts)
