"""Backward-pass exercises (Backprop Ninja style): the forward is given, the learner writes the backward.

    tinyseq exercise list                           the exercises and the tinyseq function each one mirrors
    tinyseq exercise start layernorm --to ln.py     a file with the forward and a blanked backward
    tinyseq exercise check ln.py                    every gradient vs central finite differences (float64)

catalog.py: the exercises and their tiny problems; template.py: the learner's file, cut from tinyseq's
own source (so it cannot drift from the code); checker.py: the check; cli.py: the `exercise` commands.
"""
from tinyseq.exercises.catalog import EXERCISES  # noqa: F401
