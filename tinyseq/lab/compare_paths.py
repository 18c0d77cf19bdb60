"""`tinyseq compare` on a path-star task: what one run measures, the rows over seeds, the table, the sentence.

compare.py runs the grid (variants x seeds, workers, saved runs) for every kind of task; a path-star task
differs only in what is measured after training and how it is printed, which is all here:

    measure(model, spec, variant, seed)   one run: greedy and teacher-forced accuracy per path position on
                                          2,000 held-out graphs, exact match, and the plan probe from the final
                                          hook (no random-init control here: `tinyseq probe` has it)
    aggregate_rows(variants, by_variant)  mean +- spread over seeds per variant
    format_table(results)                 one table: exact match, planning step (generated / teacher-forced),
                                          the later steps teacher-forced, the plan probe, next to chance
    summary_sentence(result)              which objectives reach the paths and which stay at chance
"""
from __future__ import annotations

import math

from tinyseq import pathstar
from tinyseq.lab import mean_spread as _ms
from tinyseq.lab import model_text

PATH_GRID = ("transformer:ntp,transformer:reverse,transformer:teacherless,transformer:mtp=2,gru:ntp,gru:reverse")
LEARNED = 0.95               # exact match at or above this: the variant "reaches the paths"
LOOKUPS = 0.5                # the worst later step teacher-forced below this: the edge lookups are not learned


def measure(model, spec, variant: str, seed: int, n_graphs: int = pathstar.PROBE_GRAPHS) -> dict:
    """The record fields of one finished path-star run (JSON-able)."""
    graphs = pathstar.eval_set(spec, n_graphs, seed=0)            # the same graphs for every run of a grid
    paths = pathstar.evaluate_paths(model.logits, spec, graphs, variant)
    hook, features = list(pathstar.prefix_features(model, spec, graphs).items())[-1]
    plan = pathstar.plan_probe(features, spec, graphs, seed=seed)
    return {"paths": {"exact_match": paths["exact_match"], "exact_match_chance": paths["exact_match_chance"],
                      "path_accuracy": paths["path_accuracy"], "n_graphs": n_graphs},
            "plan": {"hook": hook, "rows": plan}}


def _row(variant, runs: dict) -> dict:
    """Mean +- spread over the seeds of one variant."""
    recs = list(runs.values())
    at = lambda r, j, key: r["paths"]["path_accuracy"][j][key]                     # noqa: E731
    l = len(recs[0]["paths"]["path_accuracy"]) if recs else 0
    later = lambda r: min((at(r, j, "teacher_forced_accuracy") for j in range(2, l)), default=None)  # noqa: E731
    plan2 = lambda r: next((p["accuracy"] for p in r["plan"]["rows"] if p["position"] == 2), None)  # noqa: E731
    first = recs[0]["paths"]["path_accuracy"] if recs else []
    return {"variant": variant.name, "kind": variant.kind, "objective": variant.objective, "seeds": sorted(runs),
            "steps": _ms([r["train"]["steps"] for r in recs]),
            "exact_match": _ms([r["paths"]["exact_match"] for r in recs]),
            "exact_by_seed": {str(s): runs[s]["paths"]["exact_match"] for s in sorted(runs)},
            "exact_match_chance": recs[0]["paths"]["exact_match_chance"] if recs else None,
            "plan_generated": _ms([at(r, 1, "generated_accuracy") for r in recs if l > 1]),
            "plan_teacher_forced": _ms([at(r, 1, "teacher_forced_accuracy") for r in recs if l > 1]),
            "plan_chance": {"generated": first[1]["generated_chance"], "teacher_forced": first[1]["chance"]}
            if l > 1 else None,
            "later_teacher_forced": _ms([later(r) for r in recs]),
            "plan_probe": _ms([plan2(r) for r in recs]),
            "plan_probe_hook": recs[0]["plan"]["hook"] if recs else None}


def aggregate_rows(variants, by_variant: dict) -> list[dict]:
    return [_row(v, by_variant[v.name]) for v in variants]


def _pm(ms, digits=3) -> str:
    if not ms or ms["mean"] is None:
        return "-"
    return f"{ms['mean']:.{digits}f}" + ("" if ms["spread"] is None else f" ±{ms['spread']:.{digits}f}")


def format_table(result) -> str:
    """One path-star result of run_grid as a table next to chance."""
    from tinyseq.report import fitted_table, wrap

    rows = [r for r in result["rows"]]
    table = [[r["variant"], f"{r['steps']['mean']:.0f}" if r["steps"]["mean"] is not None else "-",
              _pm(r["exact_match"]), _pm(r["plan_generated"]), _pm(r["plan_teacher_forced"]),
              _pm(r["later_teacher_forced"]), _pm(r["plan_probe"])] for r in rows]
    chance = _chance_row(result)
    if chance:
        table.append(chance)
    d = result.get("task_facts", {}).get("d")
    return "\n".join([
        wrap(f"{result['process']}: each variant trained {result['budget'].get('steps', '?')} steps per run"
             f"{model_text(result)}, mean ± "
             f"spread (standard deviation) over {len(result['seeds'])} seeds, on {result.get('n_graphs', 2000):,} "
             f"held-out graphs. exact: the whole generated path right. plan: path position 2, the step out of the "
             f"centre (chance 1/d{'' if d is None else f' = {1 / d:.3g}'}), generated and teacher-forced. later tf: "
             f"the worst of positions 3..l fed the true previous node. plan probe: a linear probe from the final "
             f"hook at '=' to the node at position 2."),
        fitted_table(table, ["variant", "steps", "exact", "plan gen", "plan tf", "later tf", "plan probe"],
                     ("left",) + ("right",) * 6)])


def _chance_row(result) -> list | None:
    """The (chance) row: what a predictor that follows edges but cannot plan gets, for ntp."""
    ntp = next((r for r in result["rows"] if r["objective"] == "ntp" and r["plan_chance"]), None)
    if ntp is None:
        return None
    c = ntp["plan_chance"]
    return ["(chance, ntp)", "", f"{ntp['exact_match_chance']:.3f}", f"{c['generated']:.3f}",
            f"{c['teacher_forced']:.3f}", "1.000", f"{c['generated']:.3f}"]


def _plan_at_chance(row: dict, n: int) -> bool:
    """The planning step, generated, within 3 standard errors (n graphs) of its chance level."""
    if not row["plan_chance"] or row["plan_generated"]["mean"] is None:
        return False
    chance = row["plan_chance"]["generated"]
    return abs(row["plan_generated"]["mean"] - chance) <= 3 * math.sqrt(chance * (1 - chance) / n)


def summary_sentence(result: dict) -> str:
    """Which objectives reach the paths (exact match >= LEARNED on average), which learned the lookups but stay at
    chance on the planning step (within 3 standard errors of 1/d), which did not learn the lookups at all in
    this budget (the worst later step, teacher-forced, below LOOKUPS), with the spread over seeds."""
    rows = [r for r in result["rows"] if r["seeds"]]
    if not rows:
        return "No runs finished."
    n = result.get("n_graphs", pathstar.PROBE_GRAPHS)
    reach = [r for r in rows if r["exact_match"]["mean"] >= LEARNED]
    no_lookups = [r for r in rows if r not in reach and r["later_teacher_forced"]["mean"] is not None
                  and r["later_teacher_forced"]["mean"] < LOOKUPS]
    stuck = [r for r in rows if r not in reach + no_lookups and _plan_at_chance(r, n)]
    text = lambda r: f"{r['variant']} ({_pm(r['exact_match'])})"                   # noqa: E731
    said = [("reach the paths (exact match >= 0.95): " + ", ".join(text(r) for r in reach)) if reach
            else "no variant reaches exact match 0.95"]
    if stuck:
        said.append("learn every lookup but stay at chance on the planning step when generating: " + ", ".join(
            f"{r['variant']} ({_pm(r['plan_generated'])} vs {r['plan_chance']['generated']:.3g}, exact match "
            f"{_pm(r['exact_match'])})" for r in stuck))
    if no_lookups:
        said.append(f"have not learned the edge lookups in {result['budget'].get('steps', 'this')} steps (worst later "
                    f"step, teacher-forced, below {LOOKUPS}): " + ", ".join(
                        f"{r['variant']} ({_pm(r['later_teacher_forced'])})" for r in no_lookups))
    rest = [r for r in rows if r not in reach + stuck + no_lookups]
    if rest:
        said.append("in between: " + ", ".join(text(r) for r in rest))
    return f"On {result['process']}: " + "; ".join(said) + "."
