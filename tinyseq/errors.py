"""One exception type for everything a user can get wrong.

The CLI turns a `TinyseqError` into one line on stderr and exit code 2 (no traceback); the Python API lets it
propagate so a notebook shows the same message. Messages say what was wrong *and* how to fix it.
"""


class TinyseqError(ValueError):
    """Bad input from the user: a process spec, a size, a file. The message is the whole explanation."""
