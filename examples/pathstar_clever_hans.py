"""The Clever-Hans cheat on the path-star task (Bachmann & Nagarajan 2024), on a laptop.

A star graph with d arms is listed edge by edge in random order, then a start (the centre) and a goal (a
leaf); the model must write the path. Trained teacher-forced on the path written start -> goal (ntp), a
model learns that each path node is the child of the previous one: every step is right when it is fed the
true previous node, except the first step out of the centre, which needs the goal and so a plan; that one
stays at chance, 1/d, and generation fails. Written goal -> start (reverse), every step is a parent lookup
and the same model learns the task. The script trains one transformer per objective on fresh graphs and
prints, per path position, the generated and teacher-forced accuracy next to chance, the exact-match rate on
held-out graphs, and a linear probe of the plan from the state at the last prompt token.

    python examples/pathstar_clever_hans.py                     reverse and ntp, 1150 steps each (a few minutes)
    python examples/pathstar_clever_hans.py --steps 600         a quicker look (reverse may still be on its plateau)
    python examples/pathstar_clever_hans.py --objectives reverse,teacherless --seed 1

The same as `tinyseq train --process pathstar --objective reverse --out DIR` then `tinyseq probe DIR`, in one
script: the model and the training settings are tinyseq.pathstar.MODEL and TRAIN; the comment above them
says why (the lookup circuit forms after a plateau whose length grows as the init scale shrinks, so the lr
stays constant after the warmup).
"""
import os
import sys

try:
    import tinyseq
except ImportError:                     # run from a plain checkout: python examples/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tinyseq

from tinyseq import pathstar as ps
from tinyseq import report
from tinyseq.models import build_model
from tinyseq.progress import paths_text
from tinyseq.train import TrainConfig, train


def run(spec, objective, steps, model, seed, n_eval, eval_seed, threads):
    """Train one transformer on `objective` with train(); measure paths and the plan probe on held-out graphs."""
    sizes = {**ps.MODEL["transformer"], **(model or {}), "n_ctx": spec.n_ctx}
    net = build_model("transformer", sizes, vocab=spec.vocab, seed=seed)
    config = TrainConfig(**{**ps.TRAIN, "steps": steps, "seed": seed, "objective": objective,
                            "threads": threads or "auto", "eval_sequences": min(500, n_eval)})
    summary = train(spec, net, config, callback=lambda ev: print_progress(objective, ev))
    control = build_model("transformer", sizes, vocab=spec.vocab, seed=1_000_003 + seed)
    a = ps.analyse_paths(net, spec, objective, control, n_graphs=n_eval, eval_seed=eval_seed, seed=seed)
    return {**a, "train_seconds": summary["seconds"]}


def print_progress(objective, ev):
    """Every evaluation (100 steps): exact match and the teacher-forced accuracy per path position, so the
    plateau and the drop after it show."""
    if ev["event"] == "eval":
        print(f"  {objective:11s} step {ev['step']:5d}  {paths_text(ev)}", flush=True)


def main(spec="pathstar:d=2,l=5,n=20", objectives=("reverse", "ntp"), steps=ps.TRAIN["steps"], model=None, seed=0,
         n_eval=2000, eval_seed=12345, threads=1):
    spec = ps.parse_spec(spec)
    print(f"{spec.label}: {spec.seq_len} tokens per sequence (prompt {spec.prompt_len}, path {spec.l}), "
          f"vocabulary {spec.vocab}, {steps} steps of {ps.TRAIN['batch']} fresh graphs per objective, "
          f"{ps.TRAIN['schedule']} lr 3e-3 after 50 warmup steps")
    results = [run(spec, o, steps, model, seed, n_eval, eval_seed, threads) for o in objectives]
    for r in results:
        print(f"\n{r['objective']} (trained {r['train_seconds']:.0f} s):")
        print(report.paths_report(r))
    print("\nWhat it means: a model that is right at every later step when fed the true previous node, and at "
          "chance at position 2, has learned edge lookups, not the plan.")
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else ps.TRAIN["steps"]
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    objectives = args[args.index("--objectives") + 1].split(",") if "--objectives" in args else ("reverse", "ntp")
    main(steps=steps, seed=seed, objectives=objectives)
