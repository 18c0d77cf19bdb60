"""The experiment tooling, apart from the teaching core: `compare` (objectives side by side over seeds, the
seed question's table) and `bench` (tinyseq against PyTorch, step by step). Nothing in tinyseq's pipeline
imports this package; it only calls the pipeline."""

import numpy as np


def mean_spread(values) -> dict:
    """Mean and spread (standard deviation, ddof 1) over seeds of the values given (None skipped), the n they
    rest on: the cell of every compare table, HMM or path-star."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "spread": None, "n": 0}
    return {"mean": float(v.mean()), "spread": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}
