"""Myopia is a quantity: sweep the myopia horizon M of a transformer from 0 to n_ctx - 1.

Myopic training (Wu, Morris, Levine 2024) leaves the forward pass alone and cuts the backward: the loss at
position t sends no gradient into the hidden states of positions more than M steps earlier. M = 0 is fully
myopic (no position is trained to compute anything for a later one); M = n_ctx - 1 cuts nothing (ordinary
next-token training). The "myopia gap" is the extra loss a myopic model pays. If myopia were a quality, the gap
would be all-or-nothing; this script measures it at every M, with several seeds, using tinyseq.lab.compare (the
same machinery as `tinyseq compare`), so each M gets mean +- spread and is judged against the seed noise.

    python examples/myopia_sweep.py                 mess3, 2 seeds x 11 variants x 400 steps: a few minutes
    python examples/myopia_sweep.py rrxor           another process
    TINYSEQ_EXAMPLE_SECONDS=4 python examples/myopia_sweep.py      a quick time budget per run instead

Finished runs are saved under runs/example-myopia-sweep-PROCESS and reused when the script runs again.
"""
import os
import sys

try:
    import tinyseq
except ImportError:                     # run from a plain checkout: python examples/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tinyseq

from tinyseq.lab import compare
from tinyseq.models import make_config


def main(process="mess3", seconds=None, seeds=2, workers=None, threads=None, out=None, model=None, horizon=2,
         steps=400):
    # equal steps, not equal time: a myopic backward costs a different time per step, and on a shared machine
    # the load changes from run to run; both would leak into a time-budgeted comparison
    seconds = seconds or (float(os.environ["TINYSEQ_EXAMPLE_SECONDS"]) if "TINYSEQ_EXAMPLE_SECONDS" in os.environ
                          else None)
    steps = None if seconds else steps
    proc = tinyseq.process(process)
    n_ctx = make_config("transformer", model or {}, proc.vocab).n_ctx
    grid = ["transformer:ntp"] + [f"transformer:myopia={m}" for m in range(n_ctx)]
    if out is None:
        out = os.path.join("runs", f"example-myopia-sweep-{proc.name.split(':')[0]}")
    budget = f"{seconds:g} s" if seconds else f"{steps} steps"
    print(f"{proc.label}: transformer, next-token training vs myopia M = 0..{n_ctx - 1}, {seeds} seeds x "
          f"{budget} per run (runs saved in {out}) ...")
    result = compare.run_grid(proc, compare.parse_grid(grid), seeds=seeds, seconds=seconds, steps=steps,
                              workers=workers,
                              threads_per_run=threads, out=out, horizon=horizon,
                              model_overrides={"transformer": model} if model else None)
    print(compare.format_table(result))
    print(result["sentence"])

    rows = {r["variant"]: r for r in result["rows"] if r["seeds"]}
    ntp = rows.get("transformer:ntp")
    sweep = [(m, rows[f"transformer:myopia={m}"]["vs_ntp_nats"]) for m in range(n_ctx)
             if f"transformer:myopia={m}" in rows and rows[f"transformer:myopia={m}"]["vs_ntp_nats"]]
    print()
    if ntp is None or not sweep or ntp["gap_nats"]["spread"] is None:
        print("Not enough finished runs to read the sweep (run it again to finish it).")
        return result
    noise = compare.NOISE_SPREADS * ntp["gap_nats"]["spread"]
    costs = [(m, d["mean"]) for m, d in sweep]
    costly = [m for m, d in costs if d > noise]
    print(f"What it means: the myopia gap (loss of the myopic model minus next-token training, same seed) at "
          f"M = 0..{n_ctx - 1} is " + ", ".join(f"{d:+.1e}" for _, d in costs) + " nats;")
    if not costly:
        print(f"none of them exceeds the noise ({compare.NOISE_SPREADS:g} x the seed spread of the NTP gap, "
              f"{noise:.1e} nats): on {proc.label}, with this budget, a fully myopic transformer loses nothing "
              f"measurable, so nothing here needs pre-caching.")
    else:
        free = [m for m, d in costs if d <= noise]
        first_free = min((m for m in free if all(mm in free for mm in range(m, n_ctx))), default=None)
        print(f"it exceeds the noise ({noise:.1e} nats) at M = {', '.join(map(str, costly))}"
              + (f" and is within noise from M = {first_free} on" if first_free is not None else "")
              + f": the largest cost is {max(d for _, d in costs):.1e} nats at M = {max(costs, key=lambda x: x[1])[0]}.")
        steady = all(d <= prev + noise for (_, prev), (_, d) in zip(costs, costs[1:]))
        if steady:
            print("The cost falls off as the gradient may reach further back: myopia is a setting along a scale, "
                  "not a switch.")
        else:
            print("The cost does not fall off steadily with M here (seed noise at this budget): more seeds or "
                  "longer runs would tell.")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:2])
