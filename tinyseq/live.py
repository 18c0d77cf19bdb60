"""The live simplex: while a network trains, the belief simplex it is forming, redrawn in place on a terminal.

Every INTERVAL seconds of wall time, LiveView runs the network on a small fixed set of sampled sequences, fits
an affine probe from the last layer's output (analysis.final_hook) to the exact beliefs on half of them, and
draws the other half's true beliefs beside the probed ones (plot.simplex_picture), under the step, the loss gap
of the last evaluation and the probe's held-out MSE. Plain ANSI escapes (cursor up, clear line, hide / show the
cursor) and nothing else, so it works over ssh. Off a terminal it is the plain Progress lines.

Cost: one forward pass over LIVE_SEQUENCES sequences and a small least-squares fit per redraw (BENCHMARKS.md,
"Live view cost", measures it against training throughput).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import time

import numpy as np

from tinyseq import beliefs as B
from tinyseq import plot, probes
from tinyseq.analysis import ROWS_PER_FEATURE, final_hook, hook_label, model_context, run_model
from tinyseq.errors import TinyseqError
from tinyseq.processes import sample
from tinyseq.progress import Progress, budget_used

INTERVAL = 1.5              # seconds between redraws (TINYSEQ_LIVE_INTERVAL overrides it, e.g. in tests)
LIVE_SEQUENCES = 400        # probe set: half to fit the probe, half held out and drawn
LIVE_SEED = 0               # the probe set is sampled once, from this seed (not the training batches' stream)
SMALL_RIDGE = 1e-2          # dimensionless ridge when the fit half has too few rows per feature for plain OLS

HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"          # cursor off / on
CLEAR_EOL, CLEAR_DOWN = "\x1b[K", "\x1b[J"     # erase to the end of the line / of the screen


def up(n: int) -> str:
    """The escape that moves the cursor n lines up (to redraw over the previous frame)."""
    return f"\x1b[{n}A" if n > 0 else ""


def write_all(stream, text: str) -> None:
    """Write text to the stream's file descriptor, all of it. Python's buffered sys.stderr was seen dropping the
    rest of a frame when Ctrl-C interrupted a write to a terminal that was slow to read (the frame ended mid-line,
    the cursor stranded in the picture); os.write in a loop resumes after the signal instead."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):     # an in-memory stream
        stream.write(text)
        stream.flush()
        return
    stream.flush()                                     # whatever Python still buffers goes first
    data = text.encode(getattr(stream, "encoding", None) or "utf-8", errors="replace")
    while data:
        data = data[os.write(fd, data):]


class ProbeSet:
    """LIVE_SEQUENCES sequences of the process with their exact beliefs, split once into a fit half and a
    held-out half. measure(model) fits the probe on the first and scores and returns the second."""

    def __init__(self, process, n_ctx: int, n_sequences: int = LIVE_SEQUENCES, seed: int = LIVE_SEED):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(9,)))
        self.tokens = sample(process, n_sequences, n_ctx, rng)                      # (N, T)
        beliefs = B.belief_states(process, self.tokens)                             # (N, T, S)
        half = n_sequences // 2
        S = beliefs.shape[-1]
        self.fit_true = beliefs[:half].reshape(-1, S)                               # (half * T, S)
        self.held_true = beliefs[half:].reshape(-1, S)                              # ((N - half) * T, S)
        self.half = half
        guess = self.fit_true.mean(axis=0)                                          # (S,) the constant probe
        self.baseline_mse = probes.mse(self.held_true, np.broadcast_to(guess, self.held_true.shape))

    def measure(self, model) -> tuple:
        """-> (probed held-out beliefs (M, S), held-out MSE, the hook read). One forward pass, one fit."""
        _, acts, hooks = run_model(model, self.tokens, want_probs=False)
        hook = final_hook(hooks)
        X = acts[hook]                                                              # (N, T, D) float32
        D = X.shape[-1]
        X_fit = X[:self.half].reshape(-1, D)
        X_held = X[self.half:].reshape(-1, D)
        ridge = 0.0 if len(X_fit) >= ROWS_PER_FEATURE * D else SMALL_RIDGE
        W, b = probes.fit_affine(X_fit, self.fit_true, ridge=ridge)                 # (D, S), (S,)
        probed = probes.predict_affine(X_held, W, b)                                # (M, S)
        return probed, probes.mse(self.held_true, probed), hook


def redraw_interval() -> float:
    """INTERVAL, or the seconds TINYSEQ_LIVE_INTERVAL gives (0 redraws after every step)."""
    text = os.environ.get("TINYSEQ_LIVE_INTERVAL")
    if text is None:
        return INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise TinyseqError(f"TINYSEQ_LIVE_INTERVAL must be a number of seconds >= 0, got {text!r}")
    return seconds


def picture_size(n_states: int, cols: int, rows: int) -> tuple | None:
    """(panel width, panel height) in characters for a frame that fits cols x rows, or None: no room."""
    width, height = plot.picture_size(max(cols, 80))   # the final picture's proportions, at the screen's width
    height = 3 if n_states == 2 else height             # 2 states: a strip
    height = min(height, rows - 7)                      # status (2), titles, caption (<= 2), a spare line
    return (width, height) if height >= 3 and n_states >= 2 else None


class LiveView:
    """The training callback of `demo` and `train --live`: the live simplex on a terminal, Progress's plain lines
    elsewhere (a pipe, a log file, TERM=dumb). close() (also run at exit) always shows the cursor again."""

    def __init__(self, model, process, stream=None, interval: float | None = None,
                 n_sequences: int = LIVE_SEQUENCES):
        self.stream = stream or sys.stderr
        self.progress = Progress(self.stream)          # the start line, smoothed rate and loss, plain lines
        self.live = self.progress.tty and os.environ.get("TERM") != "dumb"
        self.interval = interval if interval is not None else redraw_interval()
        self.model = model
        self.n_states = process.n_states
        self.probe_set = ProbeSet(process, model_context(model), n_sequences) if self.live else None
        self.drawn = 0                                 # lines of the frame on screen (the cursor is below them)
        self.writing = False                           # a frame is being written (an interrupt may cut it)
        self.hidden = False                            # the cursor is hidden
        self.last_draw = -float("inf")
        self.last_step = None
        self.seconds = 0.0                             # wall time spent measuring and drawing (its whole cost)
        if self.live:
            atexit.register(self.close)

    def __call__(self, ev) -> None:
        if not self.live:
            self.progress(ev)
            return
        kind = ev["event"]
        if kind == "start":
            self.progress(ev)                          # one permanent line above the drawing
        elif kind == "step":
            self.progress.observe(ev)
            self.last_step = ev
            if time.perf_counter() - self.last_draw >= self.interval:
                self.draw(ev)
        elif kind == "eval":
            self.progress.gap = ev
        elif kind == "end":
            if ev["status"] == "finished" and self.last_step is not None:
                self.draw(self.last_step)              # the picture left on screen is the trained network's
            self.close()

    def status(self, ev, mse: float, n_held: int) -> list[str]:
        """The two lines above the picture: where training is, and what the probe reads."""
        _, where = budget_used(ev)
        text = (f"{where}  {self.progress.rate / 1e3:.1f}k tok/s  loss {self.progress.loss:.4f}"
                + self.progress.gap_text())
        return [text, f"probe MSE {mse:.2e} on {n_held} held-out sequences "
                      f"(mean-belief guess {self.probe_set.baseline_mse:.2e})"]

    def frame(self, ev) -> list[str]:
        """Status lines and, if the terminal has room, the two braille panels; no line wider than the screen."""
        probed, mse, hook = self.probe_set.measure(self.model)
        lines = self.status(ev, mse, len(self.probe_set.tokens) - self.probe_set.half)
        size = shutil.get_terminal_size()
        panel = picture_size(self.n_states, size.columns, size.lines)
        if panel is not None:
            lines += plot.simplex_picture(self.probe_set.held_true, probed,
                                          titles=("true beliefs", f"probed: {hook_label(hook)}"),
                                          width=panel[0], height=panel[1]).split("\n")
        return [line[:max(size.columns - 1, 1)] for line in lines]

    def draw(self, ev) -> None:
        """Redraw in place: up over the previous frame, each line cleared to its end, anything below erased.
        The frame goes out as one write; if an exception cuts it, close() erases the unwritten rest."""
        t0 = time.perf_counter()
        lines = self.frame(ev)
        text = ("" if self.hidden else HIDE) + up(self.drawn) + "".join(f"\r{line}{CLEAR_EOL}\n" for line in lines)
        self.writing, self.hidden = True, True
        write_all(self.stream, text + CLEAR_DOWN)
        self.writing, self.drawn = False, len(lines)
        self.last_draw = time.perf_counter()
        self.seconds += self.last_draw - t0

    def close(self) -> None:
        """Leave the terminal as it was: below the drawing, on a clean line, cursor shown. Safe to call twice."""
        if not self.live:
            self.progress.close()
            return
        if self.hidden or self.writing:
            # ESC ends any escape an interrupt cut in half; after a cut frame, erase its unwritten rest
            write_all(self.stream, ("\r" + CLEAR_DOWN if self.writing else "") + SHOW)
        self.hidden = self.writing = False
        atexit.unregister(self.close)
