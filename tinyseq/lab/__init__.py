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


def fields_text(fields: dict) -> str:
    """{"n_layers": 3, "d_mlp": 64} -> "n_layers 3, d_mlp 64": model settings in the words of --set."""
    return ", ".join(f"{k} {v}" for k, v in fields.items())


def model_text(result: dict) -> str:
    """" (transformer: n_layers 3, d_mlp 64)" for each architecture whose model a grid changed, for the table's
    first line (HMM or path-star); "" when none."""
    models = (result.get("budget") or {}).get("model", {})
    return "".join(f" ({kind}: {fields_text(fields)})" for kind, fields in models.items())
