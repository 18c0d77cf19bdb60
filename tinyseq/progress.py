"""What a person watches while tinyseq trains: a one-line bar redrawn in place on a terminal, plain
periodic lines otherwise (a log file, CI). Both are callbacks of the event dicts train() and compare emit;
nothing here computes anything."""
from __future__ import annotations

import sys
import time

from tinyseq.report import term_width, wrap


class Progress:
    """The training callback: a one-line bar redrawn in place on a terminal, plain periodic lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_draw = 0.0
        self.on_line = False             # a bar is drawn and the cursor is at its end
        self.rate = None                 # smoothed tokens/s
        self.loss = None                 # smoothed training loss
        self.gap = None                  # last evaluation

    def _write(self, text, newline):
        columns = term_width()
        if self.tty and not newline:     # the bar is redrawn in place: one line, cut to the terminal
            text = text[:columns - 1]
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.on_line = True
        else:                            # a message to keep: wrapped at word boundaries
            self.stream.write(("\r" + " " * self.width + "\r" if self.on_line else "") + wrap(text, columns) + "\n")
            self.width, self.on_line = 0, False
        self.stream.flush()

    width = 0

    def close(self):
        if self.on_line:
            self.stream.write("\n")
            self.stream.flush()
            self.on_line = False

    def line(self, ev) -> str:
        done, where = budget_used(ev)
        bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
        return f"{where} [{bar}] {self.rate / 1e3:6.1f}k tok/s  loss {self.loss:.4f}" + self.gap_text()

    def gap_text(self) -> str:
        """The last evaluation's gap to the floor, as the bar and the live view show it ("" before one)."""
        g = self.gap
        if g is None:
            return ""
        if "exact_match" in g:           # a path-star task
            return f"  {paths_text(g)} @{g['step']}"
        return f"  gap {g['gap_nats']:.5f} nats ({g['gap_percent']:.2f}%) @{g['step']}"

    def observe(self, ev) -> None:
        """Fold one "step" event into the smoothed rate and loss."""
        self.rate = ev["tokens_per_s"] if self.rate is None else 0.9 * self.rate + 0.1 * ev["tokens_per_s"]
        self.loss = ev["loss"] if self.loss is None else 0.95 * self.loss + 0.05 * ev["loss"]

    def __call__(self, ev):
        kind = ev["event"]
        if kind == "start":
            what = f"{ev['steps']} steps" if ev["steps"] else f"{ev['time']:g} s"
            obj = ev.get("objective") or {}
            trained = "" if obj.get("objective", "ntp") == "ntp" else f", objective {obj['objective']}"
            trained += "" if obj.get("myopia") is None else f", myopia {obj['myopia']}"
            target = (f"Bayes floor {ev['floor_nats']:.5f} nats" if "floor_nats" in ev else
                      f"exact match by chance {ev['chance_exact_match']:.3g}")
            msg = (f"training a {ev['kind']} ({ev['params']:,} parameters{trained}) for {what} from step "
                   f"{ev['step']}; {target}")
            self._write(msg, True)
            self.last_draw = time.perf_counter()
        elif kind == "step":
            self.observe(ev)
            now = time.perf_counter()
            if now - self.last_draw >= (0.1 if self.tty else 10.0):
                self._write(self.line(ev), False)
                self.last_draw = now
        elif kind == "eval":
            self.gap = ev
            if not self.tty:
                self._write(f"eval step {ev['step']}: " + eval_line(ev), False)
                self.last_draw = time.perf_counter()
        elif kind == "end":
            self.close()


def paths_text(ev) -> str:  # a path-star evaluation: paths right, and each position teacher-forced
    tf = " ".join(f"{r['teacher_forced_accuracy']:.2f}" for r in ev["path_accuracy"])
    return f"exact match {ev['exact_match']:.3f}, teacher-forced by position {tf}"


def eval_line(ev) -> str:  # an "eval" event as the plain progress lines write it
    if "exact_match" in ev:
        return paths_text(ev)
    return (f"loss {ev['mean_nats']:.5f} nats, floor {ev['floor_nats']:.5f}, gap {ev['gap_nats']:.5f} "
            f"({ev['gap_percent']:.2f}%)")


def budget_used(ev) -> tuple:  # a "step" event -> (fraction of the budget spent, "step 120/300" or "step 120 4/60 s")
    if ev.get("steps"):
        return ev["step"] / ev["steps"], f"step {ev['step']}/{ev['steps']}"
    return min(1.0, ev["seconds"] / ev["time"]), f"step {ev['step']} {ev['seconds']:.0f}/{ev['time']:g} s"


def compare_progress(out, echo, label=None):
    """The callback of `tinyseq compare`: a line per planned / finished / failed run. echo(text) prints;
    label: the process's name, said on every line when several processes share the workers."""
    head = f"{label}: " if label else ""

    def progress(ev):
        kind = ev["event"]
        if kind == "plan":
            where = (f"on the Dask cluster at {ev['dask']}" if ev["dask"] else
                     f"{ev['workers']} worker{'s' if ev['workers'] > 1 else ''} x {ev['threads_per_run']} "
                     f"thread{'s' if ev['threads_per_run'] > 1 else ''}")
            msg = f"{head}{ev['runs']} runs ({ev['cached']} already saved in {out}), {ev['todo']} to train {where}"
            if ev["todo"] and ev["workers"] and ev["seconds"]:
                rounds = -(-ev["all_todo"] // ev["workers"])
                msg += f": about {rounds * (ev['seconds'] + 8) / 60:.0f} min{' for all processes' if label else ''}"
            echo(msg)
        elif kind == "finished":
            what = (f"exact match {ev['exact_match']:.3f}" if ev.get("exact_match") is not None
                    else f"gap {ev['gap_nats']:.2e} nats")
            echo(f"{head}[{ev['done']}/{ev['runs']}] {ev['variant']} seed {ev['seed']}: {what} "
                 f"({ev['seconds']:.0f} s)")
        elif kind == "failed":
            echo(f"{head}{ev['variant']} seed {ev['seed']} failed: {ev['error']}")
    return progress
