"""mess3: the next-token output already reveals the belief state.

mess3 has 3 hidden states and 3 symbols, and the map from the belief (a point in the 3-state simplex) to the
next-token distribution has rank 3: it is invertible. So a network whose next-token predictions are right must
hold the whole belief, and an affine probe from its own output probabilities should recover the belief as well as
a probe from its hidden state. This script trains the default 2-layer transformer, probes every layer (next to
the same probe on the untrained network), and puts the output-probe control beside the hidden-state probe.

    python examples/mess3_next_token_reveals_belief.py          about 60 s of training + 20 s of analysis
    TINYSEQ_EXAMPLE_SECONDS=10 python examples/mess3_next_token_reveals_belief.py
"""
import os
import sys

try:
    import tinyseq
except ImportError:                     # run from a plain checkout: python examples/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tinyseq

from tinyseq import report
from tinyseq.analysis import analyse, final_hook, hook_label
from tinyseq.models import build_model
from tinyseq.threads import set_threads
from tinyseq.train import TrainConfig, train

# THREADS_NOTE: one BLAS thread by default. The matrices of this small model are tiny, and on a busy 2-core
# machine a second BLAS thread spin-waits for a core: measured here under load, 80k tokens/s on 1 thread
# against 4k on 2. Pass threads=None to use every core on a quiet machine.


def main(seconds=None, seed=0, threads=1, model=None):
    """Train, analyse, print; returns the numbers the sentences use. model: config overrides (tests)."""
    seconds = seconds or float(os.environ.get("TINYSEQ_EXAMPLE_SECONDS", 60))
    set_threads(threads)                # 1: see THREADS_NOTE
    proc = tinyseq.process("mess3")
    net = build_model("transformer", model or {}, proc.vocab, seed=seed)
    print(f"Training a {net.params.size:,}-parameter transformer on {proc.label} for {seconds:g} s ...")
    summary = train(proc, net, TrainConfig(time=seconds, seed=seed, threads=threads))
    a = analyse(net, proc, seed=seed)
    print(f"{summary['steps']:,} steps. " + report.loss_line(a))
    print()
    print(report.belief_table(a))

    rows = a["belief_recovery"]
    final = final_hook([r["hook"] for r in rows if r["control"] is None and r["hook"] != "concat"])
    hidden = next(r for r in rows if r["control"] is None and r["hook"] == final)
    output = next(r for r in rows if r["control"] == "model_output")
    bayes = next(r for r in rows if r["control"] == "bayes_output")
    random = next((r for r in rows if r["control"] == "random_init" and r["hook"] == final), None)
    ranks = a["ranks"]
    print()
    print(f"What it means: for mess3 the belief -> next-token map has rank {ranks['next_token']} for "
          f"{ranks['states']} states, so the exact\nnext-token distribution pins the belief down (its probe: "
          f"R^2 {bayes['r2']:.4f}).")
    diff = output["r2"] - hidden["r2"]
    if abs(diff) <= 0.01 or diff > 0:
        print(f"The probe from the network's own next-token probabilities (R^2 {output['r2']:.4f}) matches the probe "
              f"from {hook_label(final)}\n(R^2 {hidden['r2']:.4f}, difference {diff:+.4f}): what the hidden state "
              f"holds about the belief is already visible in the output.")
    else:
        print(f"The probe from the network's own next-token probabilities (R^2 {output['r2']:.4f}) is still "
              f"{-diff:.4f} below the probe from\n{hook_label(final)} (R^2 {hidden['r2']:.4f}): with a loss gap of "
              f"{a['loss']['gap_nats']:.4f} nats its predictions are not yet good enough to reveal the belief "
              f"(train longer).")
    if random is not None:
        ratio = random["mse"] / hidden["mse"] if hidden["mse"] > 0 else float("inf")
        learned = (f"so the evidence of learning is the MSE ratio: {ratio:.1f}x smaller after training" if ratio > 1.5
                   else f"and after this little training the MSE is not yet clearly below it (ratio {ratio:.1f}x)")
        print(f"The untrained network already gives R^2 {random['r2']:.4f} from the same layer (the belief is "
              f"mostly a function of the last\nfew tokens), {learned}.")
    return {"hidden_r2": hidden["r2"], "output_r2": output["r2"], "bayes_output_r2": bayes["r2"],
            "random_init_r2": random["r2"] if random else None, "gap_nats": a["loss"]["gap_nats"]}


if __name__ == "__main__":
    main()
