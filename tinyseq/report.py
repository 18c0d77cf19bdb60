"""Tables for the terminal (tabulate). Pure formatting: every function takes numbers and returns a string.

Each table is headed by one plain sentence saying what it shows, so a terminal demo teaches as it prints.
"""
from __future__ import annotations

import math

from tabulate import tabulate as _tabulate


def tabulate(rows, **kw):
    """tabulate that prints our pre-formatted numbers as given (no re-parsing of "0.5000" into 0.5)."""
    return _tabulate(rows, disable_numparse=True, **kw)

LN2 = math.log(2)


def headed(sentence: str, table: str) -> str:
    return f"{sentence}\n{table}"


def catalogue_table(rows: list[dict]) -> str:
    body = [[r["name"], r["states"], r["vocab"],
             f"{r['entropy_rate_bits']:.4f}" + ("" if r["entropy_rate_exact"] else "*"),
             f"{r['msp_states_depth10']:,}" + ("" if r["msp_finite"] else "+"),
             r["ranks"]["next_token"], r["ranks"]["kstep_marginals"], r["ranks"]["joint_futures"], r["about"]]
            for r in rows]
    table = tabulate(body, headers=["process", "states", "vocab", "entropy rate (bits)", "MSP beliefs (depth 10)",
                                    "rank next-token", "rank k-step", "rank joint (3)", "what it shows"],
                     colalign=("left", "right", "right", "right", "right", "right", "right", "right", "left"))
    return headed(
        "The catalogue: how many hidden states each process has, how unpredictable it is, and how much of the\n"
        "belief state each kind of prediction reveals (rank of the linear map from belief to prediction).",
        table) + ("\n* estimate h(10): the MSP is infinite.  + the MSP keeps growing with depth (infinite)."
                  "\nUse `tinyseq process show NAME` for one process in detail.")


def process_report(f: dict) -> str:
    out = []
    out.append(f"{f['name']}: {f['states']} hidden states, {f['vocab']} symbols ({', '.join(f['symbols'])})")
    stat = ", ".join(f"{p:.4f}" for p in f["stationary"])
    rate = f"{f['entropy_rate_nats']:.6f} nats = {f['entropy_rate_bits']:.6f} bits"
    rate += " (exact)" if f["entropy_rate_exact"] else f" (estimate h({f['depth']}); the MSP is infinite)"
    cmu = f["statistical_complexity_nats"]
    facts = [
        ["stationary distribution", stat],
        ["entropy rate h_mu", rate],
        ["excess entropy (estimate to depth)", f"{f['excess_entropy_nats_estimate']:.6f} nats"],
        [f"distinct beliefs to depth {f['depth']} (MSP)",
         f"{f['msp_states']:,}" + ("" if f["msp_finite"] else " (infinite MSP: grows with depth)")],
        ["statistical complexity C_mu",
         f"{cmu:.6f} nats = {cmu / LN2:.6f} bits" if cmu is not None else "n/a (MSP not finite)"],
    ]
    out.append(tabulate(facts, tablefmt="plain"))
    out.append("")
    h = f["myopic_entropy_nats"]
    rows = [[L + 1, f"{v:.6f}", f"{v / LN2:.6f}", f"{sum(h[:L + 1]):.6f}"] for L, v in enumerate(h)]
    out.append(headed(
        "h(L) = H(X_L | X_1..L-1): the best possible expected loss at position L. A trained model's loss at\n"
        "position L can only approach it from above.",
        tabulate(rows, headers=["L", "h(L) nats", "h(L) bits", "H(L) nats"], colalign=("right",) * 4)))
    out.append("")
    rows = [[k + 1, f"{b:.4f}", f"{m:.4f}", f"{b - m:+.4f}"]
            for k, (b, m) in enumerate(zip(f["kstep_bayes_accuracy"], f["kstep_marginal_accuracy"]))]
    out.append(headed(
        f"How well can anyone predict the token k steps ahead after a context of {f['context']} tokens? Bayes is\n"
        "E[max_x P*(x_t+k | past)], exact; the baseline always guesses the most frequent symbol.",
        tabulate(rows, headers=["k", "Bayes accuracy", "baseline", "gain"], colalign=("right",) * 4)))
    out.append("")
    r = f["ranks"]
    rows = [["next-token distribution", r["next_token"]],
            [f"k-step marginals, k <= {r['horizon']}", r["kstep_marginals"]],
            [f"joint of the next {r['horizon']} tokens", r["joint_futures"]],
            ["belief (hidden states)", r["states"]]]
    out.append(headed(
        "How much of the belief each prediction reveals: the rank of the linear map from belief to it. Below\n"
        "the number of states, a model could predict that perfectly while forgetting part of the belief.",
        tabulate(rows, headers=["prediction", "rank"], colalign=("left", "right"))))
    return "\n".join(out)


def gradcheck_report(results, tol) -> str:
    out = [f"Hand-written backward vs central finite differences, float64, random upstream gradient.\n"
           f"A tensor passes when its largest relative error is below {tol:g}."]
    for kind, label, rows in results:
        body = [[r["name"], "x".join(map(str, r["shape"])), f"{r['max_abs_diff']:.2e}", f"{r['max_rel_err']:.2e}",
                 "OK" if r["ok"] else "FAIL"] for r in rows]
        out.append(f"\n{kind}: {label}")
        out.append(tabulate(body, headers=["tensor", "shape", "max abs diff", "max rel err", ""],
                            colalign=("left", "right", "right", "right", "left")))
    n_fail = sum(not r["ok"] for _, _, rows in results for r in rows)
    n_all = sum(len(rows) for _, _, rows in results)
    out.append(f"\n{n_all - n_fail} passed, {n_fail} failed")
    return "\n".join(out)
