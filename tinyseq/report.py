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


# ----------------------------------------------------------------------------------------------------------
# `tinyseq probe` / `tinyseq demo`: the tables of tinyseq.analysis.analyse (one dict in, strings out)
def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}%"


def _sci(x) -> str:
    return "-" if x is None or x != x else f"{x:.2e}"


def _ratio(x) -> str:
    return f"{x:.1f}x" if x < 100 else f"{x:.0f}x" if x < 10_000 else ">10,000x"


# ----------------------------------------------------------------------------------------------------------
# the sentences: analyse() returns numbers and facts; these say in words what was measured, on what
def describe(a: dict) -> dict:
    """analyse()'s result with its sentences added (what `probe --json` prints): eval_set.description and
    .split, belief_set.description, belief_protocol, kstep_protocol."""
    e = a["eval_set"]
    out = {**a, "eval_set": {**e, "description": describe_set(e["facts"]),
                             "split": f"fit {e['frac_fit']:.0%} / evaluate {1 - e['frac_fit']:.0%} of the sequences "
                                      f"(split by sequence, seed {e['seed']})"},
           "belief_set": {**a["belief_set"], "description": describe_set(a["belief_set"]["facts"])},
           "belief_protocol": belief_protocol(a["belief_protocol_facts"]),
           "kstep_protocol": kstep_protocol(a["kstep_protocol_facts"])}
    return out


def _described(a: dict) -> dict:
    return a if "belief_protocol" in a else describe(a)


def describe_set(f: dict) -> str:
    """Which sequences a set holds, from EvalData.facts."""
    n, T, V = f["n_sequences"], f["n_ctx"], f["vocab"]
    if f["kind"] == "enumerated":
        weights = ("each weighted by its exact probability" if f["weighting"] == "probability"
                   else "each weighted equally (the published protocol)")
        text = f"all {n:,} possible sequences of length {T} (of {V}^{T} = {V ** T:,}), {weights}"
    else:
        text = f"{n:,} sequences of length {T} sampled from the process ({f['n_distinct']:,} distinct)"
    if f.get("too_many"):
        text += f"; {V}^{T} = {V ** T:,} is too many to enumerate"
    if "few_fit_rows" in f:
        text += (f"; the {f['enumerated']:,} enumerated sequences give only {f['few_fit_rows']:,} fit rows for a "
                 f"{f['probe_width']}-wide probe")
    if "shared_fraction" in f:
        text += (f"; {100 * f['shared_fraction']:.0f}% of held-out sequences also occur in the fit part (the process "
                 f"has only {f['distinct_sequences']:,} distinct sequences)")
    if "wide_probe_prefixes" in f:
        text += (f"; its fit part holds only {f['wide_probe_prefixes']:,} distinct prefixes for the "
                 f"{f['wide_probe_width']}-wide probe, so held-out scores of wide probes are close to in-sample ones")
    return text


def belief_protocol(f: dict) -> str:
    w = "probability-weighted" if f["weighted"] else "unweighted"
    r = (f"ridge 0 (plain least squares) when the fit part has >= {f['rows_per_feature']} rows per dimension, "
         f"else chosen by 5-fold CV over the fit part's distinct prefixes" if f["ridge"] == "auto"
         else f"ridge {f['ridge']:g}")
    text = (f"affine probes to the exact belief, fitted on {f['n_fit_sequences']:,} sequences x {f['positions']} "
            f"positions ({f['frac_fit']:.0%}), scored on the other {f['n_eval_sequences']:,} (split by sequence); "
            f"{w}; {r}")
    if f["separate_set"]:
        text += "; on a large sampled set (see belief_set)"
    if f["n_control_sequences"]:
        text += "; random-init control: the same architecture with fresh weights (another seed)"
        if f["n_control_sequences"] < f["n_sequences"]:
            text += f", on {f['n_control_sequences']:,} of the sequences (same split)"
    return text


def kstep_protocol(f: dict) -> str:
    roll = ("the model's k-step marginal is its next-token output chained exactly (sum over all intermediate "
            "tokens, from one pass over every sequence)" if f["exact_tree"] else
            f"the model's k-step marginal is its next-token output chained over every intermediate sequence "
            f"when V^(k-1) <= {f['rollout_max_exact']}, else averaged over {f['rollout_samples']} sampled "
            f"continuations")
    fit_on = " (on the belief-probe set: the evaluation set is too small)" if f["fit_on_belief_set"] else ""
    return (f"held-out positions p whose token p+k lies in the context; predictors scored by expected accuracy "
            f"E[P*(predicted symbol)] under the exact k-step distribution; {roll}; logistic probe from "
            f"{f['hook_label']} ({f['hook']}) fitted on every row of the fit sequences{fit_on} "
            f"({'probability-weighted' if f['weighted'] else 'unweighted'}; l2 {f['l2']:g}), labels = the actual "
            f"token p+k; belief route = the belief probe of the same hook times the exact k-step map")


def eval_set_line(a: dict) -> str:
    e = _described(a)["eval_set"]
    return f"Evaluation set: {e['description']}; {e['split']}."


def loss_line(a: dict) -> str:
    loss = a["loss"]
    floor = "Bayes floor" if loss.get("floor_exact", True) else "estimated floor"
    return (f"Loss on that set: {loss['mean_nats']:.5f} nats per token vs the {floor} {loss['floor_nats']:.5f}: "
            f"gap {loss['gap_nats']:.5f} nats ({loss['gap_percent']:.2f}% of the floor).")


def belief_table(a: dict) -> str:
    """Trained hooks next to the same probe on the randomly initialised network, then the other controls."""
    a = _described(a)
    rows = a["belief_recovery"]
    random = {r["hook"]: r for r in rows if r["control"] == "random_init"}
    body = []
    for r in rows:
        if r["control"] is not None:
            continue
        c = random.get(r["hook"])
        body.append([r["label"], r["width"], f"{r['r2']:.4f}", _sci(r["mse"]), f"{r['rmse']:.4f}",
                     f"{c['r2']:.4f}" if c else "-", _sci(c["mse"]) if c else "-",
                     _ratio(c["mse"] / r["mse"]) if c and r["mse"] > 0 else "-"])
    has_random = bool(random)
    headers = ["activations", "width", "R^2", "MSE", "RMSE"]
    if has_random:
        headers += ["R^2 random init", "MSE random init", "MSE ratio"]
    else:
        body = [r[:5] for r in body]
    main = tabulate(body, headers=headers, colalign=("left",) + ("right",) * (len(headers) - 1))
    names = {"shuffled_labels": "shuffled labels: ", "model_output": "", "bayes_output": ""}
    ctrl = [[names[r["control"]] + r["label"], r["width"], f"{r['r2']:.4f}", _sci(r["mse"]), f"{r['rmse']:.4f}"]
            for r in rows if r["control"] in names]
    ctrl_table = tabulate(ctrl, headers=["control", "width", "R^2", "MSE", "RMSE"],
                          colalign=("left", "right", "right", "right", "right"))
    out = [headed("How much of the exact belief state each layer holds: an affine probe from its activations to "
                  "the belief,\nscored on held-out sequences.", main),
           "MSE is per belief coordinate (the published mess3 model: 3.9e-4)."
           + (" 'random init' is the same probe on the same architecture\nbefore training: a layer has learned the "
              "belief only where its MSE is far below that control." if has_random else ""),
           "",
           headed("Controls: a probe fitted to shuffled labels (it can read nothing), and probes from the model's "
                  "next-token output\nand from the exact Bayes next-token distribution (how much of the belief a "
                  "prediction reveals).", ctrl_table),
           f"protocol: {a['belief_protocol']}"]
    if not a["belief_set"]["same_sequences_as_eval_set"]:
        out.append(f"belief-probe set: {a['belief_set']['description']}")
    return "\n".join(out)


def distance_table(a: dict) -> str:
    d = a.get("distances")
    if not d:
        return ""
    r = a["ranks"]
    body = [[x["label"], f"{x['r2_true']:.3f}", f"{x['r2_next']:.3f}"] for x in d]
    table = tabulate(body, headers=["activations", "R^2 vs belief distances", "R^2 vs next-token distances"],
                     colalign=("left", "right", "right"))
    return (headed("Beyond the next token: do distances between probed beliefs follow the true-belief distances "
                   "or the next-token ones?", table)
            + f"\nFor {a['process']} the next-token prediction is a rank-{r['next_token']} view of a "
              f"{r['states']}-state belief; a layer that holds more than its output\nscores higher in the first "
              f"column (published for rrxor: 0.95 vs 0.31). {d[0]['n_pairs']:,} pairs of held-out prefixes, drawn "
              f"by probability.")


def kstep_table(a: dict) -> str:
    a = _described(a)
    rows = a["kstep"]

    def cell(acc, gain):
        return f"{acc:.4f} ({_pct(gain)})"

    body = [[r["k"], f"{r['baseline_accuracy']:.4f}", f"{r['bayes_accuracy']:.4f}",
             cell(r["rollout_accuracy"], r["rollout_gain"]), cell(r["probe_accuracy"], r["probe_gain"]),
             cell(r["belief_route_accuracy"], r["belief_route_gain"]), f"{r['kl_bits']:.5f}"] for r in rows]
    table = tabulate(body, headers=["k", "baseline", "Bayes", "model, chained", "probe", "belief route",
                                    "KL bits"], colalign=("right",) * 7)
    return (headed("Predicting the token k steps ahead: each predictor's expected accuracy E[P*(its guess)] under "
                   "the exact k-step\ndistribution, and in brackets its share of the gain from the baseline to "
                   "Bayes.", table)
            + "\nbaseline: always the most frequent symbol. model, chained: the model fed its own predictions, "
              "f(a, b, c) == g(a)(b)(c)\n(KL bits: KL(P* || it)). probe: token t+k read straight from "
              f"{a['kstep_hook_label']}. belief route: probed belief x exact k-step map."
            + f"\nprotocol: {a['kstep_protocol']}")


def simplex_section(a: dict, picture_text: str) -> str:
    p = a["picture"]
    return headed(f"The belief simplex: exact beliefs of {p['n_points']:,} held-out prefixes, and where the probe from "
                  f"{p['label']} puts them (MSE {p['mse']:.2e}).", picture_text)


def probe_report(a: dict, picture_text: str | None = None) -> str:
    """Everything `tinyseq probe` prints, in reading order (a: analyse()'s result, with or without describe())."""
    a = _described(a)
    parts = [eval_set_line(a), loss_line(a), "", belief_table(a)]
    dist = distance_table(a)
    if dist:
        parts += ["", dist]
    parts += ["", kstep_table(a)]
    if picture_text:
        parts += ["", simplex_section(a, picture_text)]
    return "\n".join(parts)


def train_summary(summary: dict) -> str:
    """What `tinyseq train` prints at the end: loss per position next to its floor, speed, checkpoint."""
    loss = summary["loss"]
    rows = [[p["position"], f"{p['loss_nats']:.5f}", f"{p['floor_nats']:.5f}", f"{p['gap_nats']:.5f}"]
            for p in loss["per_position"]]
    rate = f"{summary['tokens_per_s']:,.0f}" if summary["tokens_per_s"] else "-"
    floor = "Bayes floor" if loss["floor_exact"] else "estimated floor"
    return "\n".join([
        tabulate(rows, headers=["position L", "loss (nats)", "floor h(L)", "gap"], colalign=("right",) * 4),
        f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.1f} s ({rate} tokens/s)",
        f"loss {loss['mean_nats']:.5f} nats vs {floor} {loss['floor_nats']:.5f}: gap {loss['gap_nats']:.5f} "
        f"nats ({loss['gap_percent']:.2f}% of the floor)",
        f"checkpoint: {summary['checkpoint']}  (tinyseq.load(path) in Python)"])


def trained_line(summary: dict) -> str:
    return f"Trained {summary['steps']:,} steps ({summary['tokens']:,} tokens) in {summary['seconds']:.1f} s."


def demo_intro(f: dict) -> str:
    """The process facts `tinyseq demo` starts with."""
    r = f["ranks"]
    reveal = ("so the next-token prediction alone pins down the belief" if r["next_token"] >= r["states"]
              else "so a perfect next-token predictor could still forget part of the belief")
    return (f"{f['name']}: {f['states']} hidden states, {f['vocab']} symbols ({', '.join(f['symbols'])}).\n"
            f"A model reading {f['context']} tokens can at best reach a mean loss of {f['floor_nats']:.5f} nats per "
            f"token\n(the Bayes floor, mean h(2..{f['context'] + 1})).\n"
            f"The belief over the hidden states is all any predictor needs for every future token. The map from\n"
            f"belief to next-token prediction has rank {r['next_token']} for a {r['states']}-state belief,\n{reveal}.")
