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
    if f.get("depth_note"):
        out.append(wrap(f"({f['depth_note']}; give --depth and --context to choose)"))
    if f.get("factors"):
        out += [factors_table(f), ""]
    stat = ", ".join(f"{p:.4f}" for p in f["stationary"])
    rate = f"{f['entropy_rate_nats']:.6f} nats = {f['entropy_rate_bits']:.6f} bits"
    rate += ", the sum of the factors'" if f.get("factors") else ""
    rate += " (exact)" if f["entropy_rate_exact"] else f" (estimate h({f['depth']}); the MSP is infinite)"
    cmu = f["statistical_complexity_nats"]
    msp = ("not enumerated: see the factors" if f["msp_states"] is None else
           f"{f['msp_states']:,}" + ("" if f["msp_finite"] else " (infinite MSP: grows with depth)"))
    facts = [
        ["stationary distribution", stat],
        ["entropy rate h_mu", rate],
        ["excess entropy (estimate to depth)", f"{f['excess_entropy_nats_estimate']:.6f} nats"],
        [f"distinct beliefs to depth {f['depth']} (MSP)", msp],
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
    if f.get("mixture"):
        out += ["", mixture_report(f["mixture"])]
    return "\n".join(out)


def mixture_report(m: dict) -> str:
    """`process show` on a mixture: h(L) by position next to each component's floor, and the posterior."""
    K = len(m["components"])
    rows = [[L + 1, f"{h:.5f}", f"{known:.5f}"] + [f"{hk[L]:.5f}" for hk in m["component_myopic_entropy_nats"]]
            + [f"{e:.4f}", f"{p:.4f}"]
            for L, (h, known, e, p) in enumerate(zip(m["myopic_entropy_nats"], m["known_component_floor_nats"],
                                                     m["posterior_entropy_nats"], m["true_component_posterior"]))]
    headers = ["L", "h(L)", "told"] + [f"h_{k + 1}(L)" for k in range(K)] + ["H(C|x)", "P(true)"]
    names = "; ".join(f"h_{k + 1}: {lab} (weight {w:g})" for k, (lab, w) in enumerate(zip(m["components"],
                                                                                         m["weights"])))
    rate = f"{m['entropy_rate_nats']:.6f} nats" + ("" if m["entropy_rate_exact"] else " (from estimates h(depth))")
    return "\n".join([
        headed("A mixture: each sequence comes from one component, so h(L) keeps falling with L as the context "
               "reveals which. 'told': sum_k w_k h_k(L), the floor of a reader told the component; h_k(L): each "
               "component alone; H(C|x): the entropy of the posterior over components after L tokens (nats, "
               f"{m['prior_entropy_nats']:.4f} before any); P(true): the posterior's mean weight on the true "
               "component.", fitted_table(rows, headers, ("right",) * len(headers))),
        wrap(names),
        wrap(f"h(L) - told = H(C | x_1..L-1) - H(C | x_1..L): what token L reveals about the component. h(L) "
             f"falls towards the mixture's entropy rate, the weighted mean of its components': {rate}.")])


def factors_table(f: dict) -> str:
    """A product's factors, one row each, with the facts the product's own are combined from."""
    rows = [[i + 1, p["name"], p["states"], p["vocab"], f"{p['entropy_rate_bits']:.6f}"
             + ("" if p["entropy_rate_exact"] else "*"), f"{p['msp_states']:,}" + ("" if p["msp_finite"] else "+"),
             "-" if p["statistical_complexity_nats"] is None else f"{p['statistical_complexity_nats'] / LN2:.4f}",
             f"{p['kstep_bayes_accuracy'][0]:.4f}"] for i, p in enumerate(f["factors"])]
    table = tabulate(rows, headers=["", "factor", "states", "vocab", "h (bits)", f"MSP d{f['depth']}", "C_mu bits",
                                    "Bayes k=1"], colalign=("right", "left") + ("right",) * 6)
    d = f["factor_dimensions"]
    return (headed("A product of independent processes: the hidden state is the tuple of the factors' states, the "
                   "symbol the tuple of their symbols (named factor symbols joined by '.'). Every exact fact below "
                   "comes from the factors: beliefs are outer products of theirs, h(L) and h_mu are sums, the "
                   "Bayes accuracies products; the joint MSP is never enumerated.", table) + "\n"
            + wrap(f"Belief dimensions: sum (S_i - 1) = {d['sum']} for the factors, prod S_i - 1 = {d['joint']} for "
                   "the joint simplex."))


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
    ref = a.get("belief_dimensions") or {"simplex": a["states"] - 1, "factors_sum": None}
    simplex = (f"the belief simplex has {ref['simplex']} dimensions" if ref["factors_sum"] is None else
               f"the factors' belief simplices have sum (S_i - 1) = {ref['factors_sum']} dimensions together, the "
               f"joint belief simplex prod S_i - 1 = {ref['simplex']}")
    return (headed("How many dimensions each layer uses: principal components of its held-out activations that "
                   f"explain 90 / 95 / 99% of their variance; {simplex}"
                   + (" ('init': the same for the random-init network)." if has_init else "."), table))


def factor_table(a: dict) -> str:
    """Products: each factor's belief and the joint belief read from every hook, trained and at random init,
    and the principal angles between the factor subspaces."""
    f = a.get("factors")
    if not f:
        return ""
    rows, n = f["hooks"], len(f["factor_labels"])
    names = [f"f{i + 1}" for i in range(n)] + ["joint"]
    has_init = any(r["random_init"] for r in rows)

    def cells(block):
        return [x for s in block["factors"] + [block["joint"]] for x in (f"{s['r2']:.4f}", _sci(s["mse"]))]

    def angles(block):
        return "; ".join(", ".join(f"{x:.0f}" for x in p["angles"]) for p in block["angles_degrees"])

    body = [[r["label"]] + cells(r) + [angles(r)]
            + ((cells(r["random_init"]) + [angles(r["random_init"])]) if r["random_init"] else
               (["-"] * (2 * n + 3) if has_init else [])) for r in rows]
    headers = (["activations"] + [f"{m} {k}" for m in names for k in ("R^2", "MSE")] + ["angles"]
               + ([f"init {m} {k}" for m in names for k in ("R^2", "MSE")] + ["init angles"] if has_init else []))
    table = fitted_table(body, headers, ("left",) + ("right",) * (len(headers) - 1))
    c = f["factored_ceiling"]
    return (headed("Each factor's belief, and the joint belief (their outer product), read from every layer by "
                   "affine probes scored on held-out sequences (the same split as the belief table).", table) + "\n"
            + wrap("; ".join(f"f{i + 1} = {x}" for i, x in enumerate(f["factor_labels"])) + ". angles: principal "
                   "angles in degrees between the factor subspaces (each the span of Cov(activations, factor "
                   "belief): the directions that move with that factor; 90 = orthogonal"
                   + (", one pair per ';'" if n > 2 else "") + "). "
                   + ("'init': the same on the random-init network. " if has_init else "")
                   + f"The joint is a product of the factors' beliefs, so it is not linear in them: read linearly "
                   f"from the exact factor beliefs side by side it reaches only R^2 {c['r2']:.4f} (MSE "
                   f"{_sci(c['mse'])}), and no code whose features each depend on one factor only, however "
                   f"nonlinear, does better (for independent factors the best additive fit to a product is linear in "
                   f"them): a joint R^2 well above it means features that combine the factors."))


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


def in_context_table(a: dict) -> str:
    """Mixtures: the loss by position against h(L) and each component's h_k(L), then the posterior by position."""
    c = a.get("in_context")
    if not c:
        return ""
    K = len(c["components"])
    names = "; ".join(f"h_{k + 1}: {lab} (weight {w:g})" for k, (lab, w) in enumerate(zip(c["components"],
                                                                                         c["weights"])))
    body = [[p["position"], f"{p['loss_nats']:.5f}", f"{p['floor_nats']:.5f}",
             f"{100 * p['gap_nats'] / p['floor_nats']:.2f}%" if p["floor_nats"] > 0 else "-"]
            + ([f"{h:.5f}" for h in [p["known_component_floor_nats"]] + p["component_floors_nats"]]
               if p["component_floors_nats"] else ["-"] * (K + 1))
            for p in c["by_position"]]
    headers = ["L", "loss", "h(L)", "gap", "told"] + [f"h_{k + 1}(L)" for k in range(K)]
    loss = fitted_table(body, headers, ("right",) * len(headers))
    init = any(p["random_init_mse"] is not None for p in c["posterior"])
    body = [[p["tokens_read"], f"{p['entropy_nats']:.4f}", f"{p['true_component_posterior']:.4f}",
             _sci(p["probe_mse"]), "-" if p["probe_r2"] is None else f"{p['probe_r2']:.4f}", _sci(p["spread_mse"])]
            + ([_sci(p["random_init_mse"])] if init else []) for p in c["posterior"]]
    headers = ["t", "H(C|x)", "P(true)", "MSE", "R^2", "spread"] + (["MSE init"] if init else [])
    post = tabulate(body, headers=headers, colalign=("right",) * len(headers))
    return "\n".join([
        headed("Learning in context: each sequence comes from one component of the mixture, so the floor h(L) "
               "keeps falling as the tokens reveal which one. The loss at position L next to h(L) (gap: % of "
               "h(L)), next to the floor of a reader told the component (told: sum_k w_k h_k(L)) and to each "
               "component's own floor h_k(L), that component alone.", loss),
        wrap(names), "",
        headed(f"The posterior over components after t tokens: its exact entropy H(C|x) (nats) and the mean "
               f"posterior of the true component, then an affine probe from {c['hook_label']} to it, scored on "
               f"held-out rows (MSE per coordinate; spread: the MSE of always answering that position's mean"
               + ("; init: the same probe at random init)." if init else ")."), post)])


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
    if in_context_table(a):
        parts += ["", in_context_table(a)]
    if factor_table(a):
        parts += ["", factor_table(a)]
    dist = distance_table(a)
    if dist:
        parts += ["", dist]
    for section in (shuffle_table(a), distance_table(a)):
        if section:
            parts += ["", section]
    parts += ["", kstep_table(a, verbose)]
    if picture_text:
        parts += ["", simplex_section(a, picture_text)]
    return "\n".join(parts)


def train_summary(summary: dict) -> str:
    """What `tinyseq train` prints at the end: loss per position next to its floor (a path-star task: path
    accuracy per position next to chance), speed, checkpoint."""
    if summary.get("paths"):
        return paths_train_summary(summary)
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


def path_table(rows) -> str:
    """Path accuracy per position: generated (greedy from the prompt) and teacher-forced, next to chance."""
    table = [[r["position"], f"{r['generated_accuracy']:.3f}", f"{r['generated_chance']:.3f}",
              f"{r['teacher_forced_accuracy']:.3f}", f"{r['chance']:.3f}"] for r in rows]
    return tabulate(table, headers=["path position", "generated", "chance", "teacher-forced", "chance"],
                    colalign=("right",) * 5)


def paths_train_summary(summary: dict) -> str:
    paths = summary["paths"]
    rate = f"{summary['tokens_per_s']:,.0f}" if summary["tokens_per_s"] else "-"
    return "\n".join([
        path_table(paths["path_accuracy"]),
        wrap(f"exact match {paths['exact_match']:.3f} on {paths['n_graphs']:,} held-out graphs (chance "
             f"{paths['exact_match_chance']:.3g}); `tinyseq probe` measures on 2,000 and probes the plan"),
        wrap(f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.1f} s ({rate} tokens/s)"),
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


# ----------------------------------------------------------------------------------------------------------
# a path-star checkpoint (tinyseq/pathstar.py): paths and the plan instead of beliefs
def plan_table(rows) -> str:
    """Plan recovery: per hook, the probe's held-out accuracy for the node at each path position (trained /
    random init), chance in the header."""
    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    ks = sorted({r["k"] for r in rows})
    cell = {(r["hook"], r["k"]): r for r in rows}
    chance = rows[0]["chance"] if rows else 0.0
    table = [[hook] + [f"{cell[hook, k]['accuracy']:.2f} / {cell[hook, k]['random_init_accuracy']:.2f}"
                       for k in ks] for hook in hooks]
    headers = ["hook (trained / random init)"] + [f"node {k}" + (" (plan)" if k == 2 else "") for k in ks]
    return tabulate(table, headers=headers) + "\n" + wrap(f"chance {chance:.3g} (one of the d candidates at each "
                                                          f"depth)")


def paths_sentence(a: dict) -> str:
    """One sentence from the numbers: did the model learn the paths, and where does it stay at chance?"""
    rows, n = a["path_accuracy"], a["n_graphs"]
    em, em_chance = a["exact_match"], a["exact_match_chance"]
    noise = lambda p: 3 * math.sqrt(max(p * (1 - p), 1e-12) / n)          # noqa: E731  (3 standard errors)
    said = [f"Generated paths are exactly right {em:.3f} of the time (chance {em_chance:.3g})"]
    if len(rows) > 2 and a["objective"] == "ntp":
        plan, later = rows[1], rows[2:]
        later_tf = min(r["teacher_forced_accuracy"] for r in later)
        if abs(plan["teacher_forced_accuracy"] - plan["chance"]) <= noise(plan["chance"]) and later_tf >= 0.95:
            said.append(f"the Clever-Hans signature: the planning step (position 2) is at chance "
                        f"({plan['teacher_forced_accuracy']:.3f} vs {plan['chance']:.3g}) while every later step "
                        f"is right at least {later_tf:.3f} of the time when fed the true previous node")
    best = max((r for r in a["plan_recovery"] if r["k"] == 2), key=lambda r: r["accuracy"], default=None)
    if best is not None:
        above = best["accuracy"] - best["chance"] > noise(best["chance"]) * math.sqrt(2)
        said.append(f"the state before the path {'holds' if above else 'does not hold'} the planning step "
                    f"linearly (best hook {best['hook']}: {best['accuracy']:.3f}, random init "
                    f"{best['random_init_accuracy']:.3f}, chance {best['chance']:.3g})")
    return "; ".join(said) + "."


def paths_report(a: dict) -> str:
    """What `tinyseq probe` prints for a path-star checkpoint."""
    return "\n".join([
        "", wrap(f"Paths on {a['n_graphs']:,} held-out graphs of {a['task']} (eval seed {a['eval_seed']}), "
                 f"objective {a['objective']}:"),
        path_table(a["path_accuracy"]),
        "", wrap("Plan recovery: a linear probe from the state at the last prompt token ('=') to the node at "
                 "each path position, fitted on half the graphs, scored on the other half:"),
        plan_table(a["plan_recovery"]),
        "", wrap(paths_sentence(a))])


def task_report(f: dict) -> str:
    """`tinyseq process show pathstar:...`: the token layout, sizes and the chance level of each position."""
    tok = f["tokens"]
    rows = [[objective, " ".join(f"{c:.3g}" for c in ch["teacher_forced"]), " ".join(f"{c:.3g}" for c in
             ch["generated"]), f"{ch['exact_match']:.3g}"] for objective, ch in f["chance"].items()]
    return "\n".join([
        wrap(f"{f['task']}: a star of d={f['d']} arms, paths of l={f['l']} nodes (centre included), "
             f"{f['nodes']} nodes labelled from n={f['n']} labels, {f['edges']} edges; a fresh graph every sequence."),
        wrap(f"Tokens: labels {tok['labels']}, ',' = {tok[',']} ends an edge, '|' = {tok['|']} ends the edge list, "
             f"'=' = {tok['=']} ends the prompt, '$' = {tok['$']} is the teacherless dummy; vocabulary {f['vocab']}."),
        wrap(f"Layout: {f['layout']}  ({f['prompt_tokens']} prompt tokens + {f['l']} path tokens = "
             f"{f['sequence_tokens']}; the model reads n_ctx = {f['n_ctx']} and is scored on the {f['l']} path "
             f"targets only)."),
        "", wrap("Chance by path position (a predictor that follows edges but cannot plan):"),
        tabulate(rows, headers=["objective", "teacher-forced", "generated", "exact match"])])
