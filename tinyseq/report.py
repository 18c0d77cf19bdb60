"""Tables for the terminal (tabulate). Pure formatting: every function takes numbers and returns a string.

Each table is headed by one plain sentence saying what it shows, so a terminal demo teaches as it prints.
Everything fits the terminal it is shown on (term_width: the terminal's width, 80 at least): prose is wrapped
at word boundaries, and the tables are narrow enough for 80 columns (compare's for 120).
"""
from __future__ import annotations

import math
import shutil
import textwrap

import tabulate as _tabulate_module
from tabulate import tabulate as _tabulate

_tabulate_module.MIN_PADDING = 0        # no extra space around headers: a column is as wide as its widest cell


def term_width() -> int:
    """The width output is fitted to: the terminal's (or $COLUMNS), never less than 80."""
    return max(80, shutil.get_terminal_size((80, 24)).columns)


def wrap(text: str, width: int | None = None) -> str:
    """Prose re-wrapped at word boundaries to the width; a blank line keeps paragraphs apart. A single word
    longer than the width (a long path) is kept whole, so it can still be copied."""
    width = width or term_width()
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width, break_on_hyphens=False, break_long_words=False)
                        for p in text.split("\n\n"))


def tabulate(rows, **kw):
    """tabulate that prints our pre-formatted numbers as given (no re-parsing of "0.5000" into 0.5), with no
    extra padding around headers (columns are as wide as their widest cell: narrow tables fit 80 columns)."""
    return _tabulate(rows, disable_numparse=True, **kw)

LN2 = math.log(2)


def fitted_table(rows, headers, colalign) -> str:
    """tabulate, split into several tables (each repeating the first column) when it is wider than the terminal."""
    width, n = term_width(), len(headers)
    for per in range(n - 1, 0, -1):                     # as many columns per table as fit
        chunks = [[0] + list(range(i, min(i + per, n))) for i in range(1, n, per)]
        tables = [tabulate([[row[j] for j in c] for row in rows], headers=[headers[j] for j in c],
                           colalign=[colalign[j] for j in c]) for c in chunks]
        if per == 1 or all(len(line) <= width for t in tables for line in t.splitlines()):
            return "\n\n".join(tables)


def headed(sentence: str, table: str) -> str:
    return f"{wrap(sentence)}\n{table}"


def catalogue_table(rows: list[dict]) -> str:
    body = [[r["name"], r["states"], r["vocab"],
             f"{r['entropy_rate_bits']:.4f}" + ("" if r["entropy_rate_exact"] else "*"),
             f"{r['msp_states_depth10']:,}" + ("" if r["msp_finite"] else "+"),
             r["ranks"]["next_token"], r["ranks"]["kstep_marginals"], r["ranks"]["joint_futures"]] for r in rows]
    table = tabulate(body, headers=["process", "states", "vocab", "h (bits)", "MSP d10", "next", "k-step", "joint"],
                     colalign=("left",) + ("right",) * 7)
    about = "\n".join(textwrap.fill(f"{r['name'].split(':')[0]}: {r['about']}", term_width(),
                                    subsequent_indent="  ") for r in rows)
    notes = ["h: entropy rate; * an estimate h(10): the MSP is infinite. MSP d10: distinct beliefs after 10 tokens; "
             "+ it keeps growing with depth (infinite). next, k-step, joint: rank of the linear map from the belief "
             "to the next-token distribution, to the k-step marginals, and to the joint of the next 3 tokens.",
             "Use `tinyseq process show NAME` for one process in detail."]
    return headed(
        "The catalogue: how many hidden states each process has, how unpredictable it is, and how much of the "
        "belief state each kind of prediction reveals (rank of the linear map from belief to prediction).",
        table) + "\n" + "\n".join(wrap(n) for n in notes) + "\n\n" + about


def process_report(f: dict) -> str:
    out = []
    out.append(wrap(f"{f['name']}: {f['states']} hidden states, {f['vocab']} symbols ({', '.join(f['symbols'])})"))
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
    label = max(len(row[0]) for row in facts)
    out.append(tabulate(facts, tablefmt="plain", maxcolwidths=[None, term_width() - label - 2]))
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
    out = [wrap(f"Hand-written backward vs central finite differences, float64, random upstream gradient. "
                f"A tensor passes when its largest relative error is below {tol:g}.")]
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
            f"continuations" + (" (each continuation runs from the prefix's cached state)" if f["kv_cache"]
                                 else ""))
    sampled = ("" if f["n_kstep_sequences"] == f["n_eval_sequences"] else
               f"on {f['n_kstep_sequences']:,} of the {f['n_eval_sequences']:,} held-out sequences, drawn at random; ")
    fit_on = " (on the belief-probe set: the evaluation set is too small)" if f["fit_on_belief_set"] else ""
    l2 = ", ".join(f"{x:g}" for x in f["l2_by_k"])
    return (f"held-out positions p whose token p+k lies in the context, {sampled}predictors scored by expected "
            f"accuracy E[P*(predicted symbol)] under the exact k-step distribution; {roll}; logistic probe from "
            f"{f['hook_label']} ({f['hook']}) fitted on every row of the fit sequences{fit_on} "
            f"({'probability-weighted' if f['weighted'] else 'unweighted'}; l2 by 5-fold CV of held-out accuracy "
            f"over whole sequences (at most {f.get('l2_cv_max_rows', 0):,} rows of them) from "
            f"{', '.join(f'{x:g}' for x in f['l2_grid'])}: {l2} for k = "
            f"1..{len(f['l2_by_k'])}), labels = the actual token p+k; belief route = the belief probe of the same "
            f"hook times the exact k-step map")


def eval_set_line(a: dict) -> str:
    e = _described(a)["eval_set"]
    return wrap(f"Evaluation set: {e['description']}; {e['split']}.")


def loss_line(a: dict) -> str:
    loss = a["loss"]
    floor = "Bayes floor" if loss.get("floor_exact", True) else "estimated floor"
    return wrap(f"Loss on that set: {loss['mean_nats']:.5f} nats per token vs the {floor} {loss['floor_nats']:.5f}: "
                f"gap {loss['gap_nats']:.5f} nats ({loss['gap_percent']:.2f}% of the floor).")


def protocol_line(text: str, verbose: bool = False) -> str:
    """A protocol sentence: its first two clauses by default (the set and the split), whole with --verbose."""
    clauses = text.split("; ")
    if not verbose and len(clauses) > 2:
        text = "; ".join(clauses[:2]) + "; ... (--verbose: the whole protocol)"
    return wrap(f"protocol: {text}")


def belief_table(a: dict, verbose: bool = False) -> str:
    """Trained hooks next to the same probe on the randomly initialised network, then the other controls."""
    a = _described(a)
    rows = a["belief_recovery"]
    random = {r["hook"]: r for r in rows if r["control"] == "random_init"}
    body = []
    for r in rows:
        if r["control"] is not None:
            continue
        c = random.get(r["hook"])
        body.append([r["label"], r["width"], f"{r['r2']:.4f}", _sci(r["mse"]),
                     f"{c['r2']:.4f}" if c else "-", _sci(c["mse"]) if c else "-",
                     _ratio(c["mse"] / r["mse"]) if c and r["mse"] > 0 else "-"])
    headers = ["activations", "width", "R^2", "MSE"] + (["R^2 init", "MSE init", "ratio"] if random else [])
    body = [row[:len(headers)] for row in body]
    main = tabulate(body, headers=headers, colalign=("left",) + ("right",) * (len(headers) - 1))
    names = {"shuffled_labels": "shuffled labels: ", "model_output": "", "bayes_output": ""}
    ctrl = [[names[r["control"]] + r["label"], r["width"], f"{r['r2']:.4f}", _sci(r["mse"])]
            for r in rows if r["control"] in names]
    ctrl_table = tabulate(ctrl, headers=["control", "width", "R^2", "MSE"], colalign=("left",) + ("right",) * 3)
    out = [headed("How much of the exact belief state each layer holds: an affine probe from its activations to "
                  "the belief, scored on held-out sequences.", main),
           wrap("MSE is per belief coordinate (the published mess3 model: 3.9e-4)."
                + (" 'init' is the same probe on the same architecture before training (random weights), 'ratio' "
                   "its MSE over the trained one's: a layer has learned the belief only where its MSE is far below "
                   "that control." if random else "")),
           "",
           headed("Controls: a probe fitted to shuffled labels (it can read nothing), and probes from the model's "
                  "next-token output and from the exact Bayes next-token distribution (how much of the belief a "
                  "prediction reveals).", ctrl_table),
           protocol_line(a["belief_protocol"], verbose)]
    if not a["belief_set"]["same_sequences_as_eval_set"]:
        out.append(wrap(f"belief-probe set: {a['belief_set']['description']}"))
    return "\n".join(out)


def dimensions_table(a: dict) -> str:
    """Principal components per hook for 90 / 95 / 99% of the variance, trained and at random init."""
    dims = a.get("dimensions")
    if not dims:
        return ""
    pct = [f"{round(100 * f)}%" for f in dims[0]["fractions"]]
    has_init = any(d["random_init_components"] for d in dims)
    body = [[d["label"], d["width"]] + d["components"]
            + ((d["random_init_components"] or ["-"] * len(pct)) if has_init else []) for d in dims]
    headers = ["activations", "width"] + pct + ([f"init {p}" for p in pct] if has_init else [])
    table = tabulate(body, headers=headers, colalign=("left",) + ("right",) * (len(headers) - 1))
    return (headed("How many dimensions each layer uses: principal components of its held-out activations that "
                   f"explain 90 / 95 / 99% of their variance; the belief simplex has {a['states'] - 1} dimensions"
                   + (" ('init': the same for the random-init network)." if has_init else "."), table))


def shuffle_table(a: dict) -> str:
    """The shuffle control: R^2 before and after the unseen part of the belief is permuted, with p-values."""
    sc = a.get("shuffle_control")
    if not sc:
        return ""
    if sc["skipped"]:
        return wrap(f"Shuffle control skipped: {sc['skipped']}.")
    n = sc["permutations"]
    body = [[("random init: " if r["control"] == "random_init" else "") + r["label"], f"{r['r2']:.4f}",
             f"{r['shuffled_mean']:.4f} ±{r['shuffled_sd']:.4f}", f"{r['drop']:+.4f}", f"{r['p_value']:.3f}"]
            for r in sc["rows"]]
    table = tabulate(body, headers=["activations", "R^2", "shuffled", "drop", "p"], colalign=("left",) + ("right",) * 4)
    return (headed(f"Beyond the next token, by shuffling: the next token sees a rank-{sc['next_token_rank']} view of "
                   f"the {sc['states']}-state belief. The part it cannot see (the unseen part) is permuted among "
                   f"held-out and among fit rows with the same next-token distribution, and each probe is refitted "
                   f"({n} times): a layer that holds the unseen part loses R^2, one that holds only the next-token "
                   f"distribution loses none.", table) + "\n"
            + wrap(f"shuffled: mean ± sd over the {n} permutations; p = (1 + permutations scoring at least the real "
                   f"R^2) / (1 + {n}), at least {1 / (n + 1):.3f}. No probe can expect an R^2 above "
                   f"{sc['ceiling']:.3f} after the shuffle ({100 * sc['movable_share']:.0f}% of held-out rows share "
                   f"their next-token distribution with rows of another unseen part)."
                   + (" 'random init': the same probes and shuffles on the network before training; a drop there "
                      "comes from features that tell prefixes apart, not from learning the belief."
                      if any(r["control"] == "random_init" for r in sc["rows"]) else "")))


def distance_table(a: dict) -> str:
    d = a.get("distances")
    if not d:
        return ""
    r = a["ranks"]
    body = [[x["label"], f"{x['r2_true']:.3f}", f"{x['r2_next']:.3f}"] for x in d]
    table = tabulate(body, headers=["activations", "R^2 vs belief", "R^2 vs next-token"],
                     colalign=("left", "right", "right"))
    return (headed("Beyond the next token: do distances between probed beliefs follow the true-belief distances "
                   "or the next-token ones? (R^2 of probed distances against each kind of distance)", table) + "\n"
            + wrap(f"For {a['process']} the next-token prediction is a rank-{r['next_token']} view of a "
                   f"{r['states']}-state belief; a layer that holds more than its output scores higher in the first "
                   f"column (published for rrxor: 0.95 vs 0.31). {d[0]['n_pairs']:,} pairs of held-out prefixes, "
                   f"drawn by probability."))


def kstep_table(a: dict, verbose: bool = False) -> str:
    a = _described(a)
    rows = a["kstep"]

    def cell(acc, gain):
        return f"{acc:.4f} ({_pct(gain)})"

    body = [[r["k"], f"{r['baseline_accuracy']:.4f}", f"{r['bayes_accuracy']:.4f}",
             cell(r["rollout_accuracy"], r["rollout_gain"]), cell(r["probe_accuracy"], r["probe_gain"]),
             cell(r["belief_route_accuracy"], r["belief_route_gain"]), f"{r['kl_bits']:.5f}"] for r in rows]
    table = tabulate(body, headers=["k", "baseline", "Bayes", "chained", "probe", "route", "KL bits"],
                     colalign=("right",) * 7)
    return (headed("Predicting the token k steps ahead: each predictor's expected accuracy E[P*(its guess)] under "
                   "the exact k-step distribution, and in brackets its share of the gain from the baseline to "
                   "Bayes.", table) + "\n"
            + wrap("baseline: always the most frequent symbol. chained: the model fed its own predictions, "
                   "f(a, b, c) == g(a)(b)(c) (KL bits: KL(P* || it)). probe: token t+k read straight from "
                   f"{a['kstep_hook_label']}. route: the belief route, probed belief x exact k-step map.")
            + "\n" + protocol_line(a["kstep_protocol"], verbose))


def simplex_section(a: dict, picture_text: str) -> str:
    p = a["picture"]
    return headed(f"The belief simplex: exact beliefs of {p['n_points']:,} held-out prefixes, and where the probe from "
                  f"{p['label']} puts them (MSE {p['mse']:.2e}).", picture_text)


def probe_report(a: dict, picture_text: str | None = None, verbose: bool = False) -> str:
    """Everything `tinyseq probe` prints, in reading order (a: analyse()'s result, with or without describe())."""
    a = _described(a)
    parts = [eval_set_line(a), loss_line(a), "", belief_table(a, verbose)]
    if dimensions_table(a):
        parts += ["", dimensions_table(a)]
    for section in (shuffle_table(a), distance_table(a)):
        if section:
            parts += ["", section]
    parts += ["", kstep_table(a, verbose)]
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
        wrap(f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.1f} s ({rate} tokens/s)"),
        wrap(f"loss {loss['mean_nats']:.5f} nats vs {floor} {loss['floor_nats']:.5f}: gap {loss['gap_nats']:.5f} "
             f"nats ({loss['gap_percent']:.2f}% of the floor)"),
        wrap(f"checkpoint: {summary['checkpoint']}  (tinyseq.load(path) in Python)")])


def trained_line(summary: dict) -> str:
    return wrap(f"Trained {summary['steps']:,} steps ({summary['tokens']:,} tokens) in {summary['seconds']:.1f} s.")


def demo_intro(f: dict) -> str:
    """The process facts `tinyseq demo` starts with."""
    r = f["ranks"]
    reveal = ("so the next-token prediction alone pins down the belief" if r["next_token"] >= r["states"]
              else "so a perfect next-token predictor could still forget part of the belief")
    return "\n".join(wrap(text) for text in (
        f"{f['name']}: {f['states']} hidden states, {f['vocab']} symbols ({', '.join(f['symbols'])}).",
        f"A model reading {f['context']} tokens can at best reach a mean loss of {f['floor_nats']:.5f} nats per "
        f"token (the Bayes floor, mean h(2..{f['context'] + 1})).",
        f"The belief over the hidden states is all any predictor needs for every future token. The map from "
        f"belief to next-token prediction has rank {r['next_token']} for a {r['states']}-state belief, {reveal}."))
