"""The Clever-Hans cheat on the path-star task (Bachmann & Nagarajan 2024), on a laptop.

A star graph with d arms is listed edge by edge in random order, then a start (the centre) and a goal (a
leaf); the model must write the path. Trained teacher-forced on the path written start -> goal (ntp), a
model learns that each path node is the child of the previous one: every step is right when it is fed the
true previous node, except the first step out of the centre, which needs the goal and so a plan; that one
stays at chance, 1/d, and generation fails. Written goal -> start (reverse), every step is a parent lookup
and the same model learns the task. The script trains one transformer per objective on fresh graphs and
prints, per path position, the generated and teacher-forced accuracy next to chance, the exact-match rate on
held-out graphs, and a linear probe of the plan from the state at the last prompt token.

    python examples/pathstar_clever_hans.py                     reverse and ntp, 1000 steps each (a few minutes)
    python examples/pathstar_clever_hans.py --steps 500         a quicker look (reverse learns after ~400)
    python examples/pathstar_clever_hans.py --schedule cosine   lr decayed to 0 over the budget
    python examples/pathstar_clever_hans.py --objectives reverse --seed 1    one objective, another seed

The model and the constant learning rate are tinyseq.pathstar.MODEL and SCHEDULE; the comment above them
says why (the lookup circuit forms after a plateau whose length grows as the init scale shrinks).
"""
import os
import sys
import time

try:
    import tinyseq
except ImportError:                     # run from a plain checkout: python examples/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tinyseq

from tinyseq import pathstar as ps
from tinyseq.models import build_model


def run(spec, objective, steps, model, seed, n_eval, eval_seed, schedule):
    """Train one transformer on `objective`; measure paths and the plan probe on held-out graphs."""
    net = build_model("transformer", {**model, "n_ctx": spec.n_ctx}, vocab=spec.vocab, seed=seed)
    graphs = ps.eval_set(spec, n_eval, eval_seed)
    probe_init = ps.plan_probe(final_state(net, spec, graphs), spec, graphs)
    seq = ps.encode(spec, graphs, objective)
    trained = ps.train_pathstar(net, spec, objective, steps=steps, seed=seed, schedule=schedule,
                                callback=lambda step, loss: print_progress(net, spec, seq, objective, step,
                                                                           steps, loss))
    t0 = time.perf_counter()
    paths = ps.evaluate_paths(net.logits, spec, graphs, objective)
    probe = ps.plan_probe(final_state(net, spec, graphs), spec, graphs)
    return {"objective": objective, "train_seconds": trained["seconds"], "final_loss": trained["final_loss"],
            "eval_seconds": time.perf_counter() - t0, **paths,
            "plan_recovery": [{**p, "random_init_accuracy": q["accuracy"]} for p, q in zip(probe, probe_init)]}


def print_progress(net, spec, seq, objective, step, steps, loss):
    """Every 100 steps: the masked loss and the held-out teacher-forced accuracy per path position, so the
    plateau and the drop after it show (for reverse, all positions right = what greedy decoding writes)."""
    if step % 100 == 0 or step == steps:
        tf = ps.path_accuracy(ps.teacher_forced(net.logits, spec, seq, objective), seq[:, spec.prompt_len:])
        per_position = " ".join(f"{a:.2f}" for a in tf["per_position"])
        print(f"  {objective:11s} step {step:5d}  masked loss {loss:.3f} nats  teacher-forced by position "
              f"{per_position}  all right {tf['exact_match']:.3f}", flush=True)


def final_state(net, spec, graphs):  # -> (B, C) the last hook (ln_final, or the last block's output) at "="
    return list(ps.prefix_features(net, spec, graphs).values())[-1]


def print_result(r):
    print(f"\n{r['objective']}: exact match {r['exact_match']:.3f} on {r['n_graphs']} held-out graphs "
          f"(chance {r['exact_match_chance']:.2f}); trained {r['train_seconds']:.0f} s with the progress lines, "
          f"final masked loss {r['final_loss']:.3f} nats")
    print("  position  generated  teacher-forced  chance (tf)")
    for row in r["path_accuracy"]:
        print(f"  {row['position']:8d}  {row['generated_accuracy']:9.3f}  {row['teacher_forced_accuracy']:14.3f}"
              f"  {row['chance']:11.2f}")
    print("  plan probe (state at '=' -> node at position):")
    for row in r["plan_recovery"]:
        print(f"  {row['position']:8d}  trained {row['accuracy']:.3f}  random init {row['random_init_accuracy']:.3f}"
              f"  chance {row['chance']:.2f}")


def main(spec="pathstar:d=2,l=5,n=20", objectives=("reverse", "ntp"), steps=1000, model=None, seed=0,
         n_eval=2000, eval_seed=12345, threads=1, schedule=ps.SCHEDULE):
    if threads:
        from tinyseq.train import apply_threads
        apply_threads(threads)
    spec = ps.parse_spec(spec)
    print(f"{spec.label}: {spec.seq_len} tokens per sequence (prompt {spec.prompt_len}, path {spec.l}), "
          f"vocabulary {spec.vocab}, {steps} steps of 128 fresh graphs per objective, {schedule} lr 3e-3")
    results = [run(spec, o, steps, model or ps.MODEL, seed, n_eval, eval_seed, schedule) for o in objectives]
    for r in results:
        print_result(r)
    print("\nWhat it means: a model that is right at every later step when fed the true previous node, and at "
          "chance at position 2, has learned edge lookups, not the plan.")
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 1000
    schedule = args[args.index("--schedule") + 1] if "--schedule" in args else ps.SCHEDULE
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    objectives = args[args.index("--objectives") + 1].split(",") if "--objectives" in args else ("reverse", "ntp")
    main(steps=steps, schedule=schedule, seed=seed, objectives=objectives)
