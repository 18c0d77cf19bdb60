"""The answer on screen: everything `tinyseq probe` and `tinyseq demo` print, as one JSON-able dict.

    analyse(model, process) -> {
        eval_set          which sequences were evaluated: every one (enumerated, weighted by its exact
                          probability) or a large sample; the split into fit / held-out sequences
        loss              the model's mean next-token loss against the Bayes floor, exact on that set
        belief_recovery   affine probes from each hook to the exact belief, with controls (random init,
                          shuffled labels, the model's own next-token output)
        dimensions        principal components per hook for 90 / 95 / 99% of the variance (belief_dimensions:
                          the simplex's S - 1 and, for a product, sum_i (S_i - 1))
        factors           products only: probes to each factor's belief next to the joint's, and the principal
                          angles between the factor subspaces (None for other processes)
        shuffle_control   with permutations=N (probe), when the next-token map has lower rank than the belief:
                          R^2 before and after the part of the belief the next token cannot see is shuffled
        distances         when the next-token map has lower rank than the belief (rrxor, z1r): do distances
                          between probed beliefs follow true-belief distances or next-token distances?
        kstep             k = 1..K: baseline, Bayes, the model's own chained k-step marginal, a logistic probe,
                          the belief route (probed belief x exact k-step map), KL, fraction of gain
        picture           which hook the simplex picture shows (the points themselves with points=True)
        in_context        mixtures only (else None): loss by position next to the mixture's floor h(L) and
                          each component's own h_k(L); the posterior over components by position, exact
                          and as read by an affine probe from the final hook
    }

The stages, each a function a reader can call on its own from Python, in the order analyse() runs them:
    check_options -> evaluation_set -> choose_belief_set -> random_init_control -> loss_vs_floor ->
    belief_recovery (belief_probe per hook, then the controls) -> dimensions -> in_context (mixtures) ->
    factor_recovery (products) -> shuffle_control (opt-in) -> distances -> kstep_accuracy -> picture -> headline

Pure computation: nothing here prints, and no sentence is written here: the result holds numbers and facts
(e.g. eval_set.facts), and tinyseq/report.py says them in words (report.describe adds the sentences). The model needs only .logits(tokens) (B, T) -> (B, T, V) and
.activations(tokens) -> {hook: (B, T, D)} (optional: .prefix_tree_forward, which run_model uses to compute each
distinct prefix once); a model of context n_ctx reads tokens[:, :n_ctx], and position
p = 0..n_ctx-1 has seen p + 1 tokens (its exact belief is beliefs.belief_states(...)[:, p]).

Why the enumerated set is cheap. A causal model's output at position p depends only on the prefix x_1..p+1, so
one forward pass over all V^n_ctx sequences (the complete prefix tree) yields the model's next-token
distribution after *every* prefix of every length. The model's own k-step marginal then needs no further
forward pass: it is the sum over the k-1 generated tokens, folded one level of the tree at a time,
    q_k(x | s) = sum_c q(c | s) q_{k-1}(x | s c),
which is the seed's f(a, b, c) == g(a)(b)(c): the model's next-token function, chained.
On a sampled set the same fold runs on a small tree per prefix instead: its continuations of up to K-1 tokens
(continuation_levels), which the transformer evaluates from the prefix's cached keys and values and a recurrent
net from the prefix's hidden state (optional: a model may also provide .continuation_logits(prefix, depth)).
"""
from __future__ import annotations

import itertools
import math
import time

import numpy as np

from tinyseq import beliefs as B
from tinyseq import mixture, probes, shuffle, train
from tinyseq.errors import TinyseqError
from tinyseq.nn.ops import softmax
from tinyseq.nn.transformer import prefix_levels
from tinyseq.product import factor_beliefs, is_product

ENUMERATE_MAX = 100_000      # enumerate every sequence when vocab ** n_ctx is at most this (mess3 n_ctx 10: 59,049)
SAMPLE_SEQUENCES = 10_000    # size of a sampled evaluation set (and the least a sampled belief-probe set gets)
ROWS_PER_FEATURE = 20        # an unregularised probe needs at least this many fit rows per activation dimension;
#                              below it the belief probe moves to a large sampled set or picks a ridge by CV
FORWARD_CHUNK = 4096         # sequences per forward pass
KSTEP_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # logistic k-step probe: L2 on standardised features (dimensionless),
#                              chosen per k by 5-fold CV of held-out accuracy (whole sequences) on the fit part;
#                              it replaces a fixed 0.1 tuned on trained mess3 models
KSTEP_CV_TOL = 1e-4          # the l2 cross-validation stops each fit at this gradient (the final fit: 1e-7); on
#                              mess3 at n_ctx 40 the CV losses matched 1e-5's to 4 digits, at 60% of the time
KSTEP_CV_MAX_ROWS = 6000     # the l2 CV runs on the rows of a seeded random subset of whole fit sequences holding
#                              at most this many rows (the final probe is fitted on every row); it chooses the same
#                              l2 on mess3 and keeps the demo's k-step stage at ~0.5 s instead of ~2 s
KSTEP_MAX_SEQUENCES = 500    # sampled sets: held-out sequences the k-step table uses (the rollouts dominate the cost)
ROLLOUT_MAX_EXACT = 128      # sampled sets: exact rollout when vocab ** (k-1) <= this, else Monte Carlo
ROLLOUT_SAMPLES = 32         # Monte Carlo continuations per prefix
ROLLOUT_ROWS = 8192          # exact rollout: prefixes x longest continuations per forward pass
RANDOM_INIT_MAX_SEQUENCES = 20_000  # the random-init control runs on at most this many sequences (a control
#                              needs the order of magnitude, not the third digit; it saves most of a forward pass)
PICTURE_POINTS = 20_000      # held-out rows shown in the simplex picture (uniform over rows: shows the geometry)
DISTANCE_PAIRS = 20_000      # pairs drawn for the pairwise-distance analysis
DEFAULT_HORIZON = 5
POSTERIOR_SPREAD_MIN = 1e-12  # a position whose posterior over components varies less than this (per coordinate,
#                              squared) has no R^2: e.g. after mess3's first token, which says nothing, all 1/2


# ----------------------------------------------------------------------------------------------------------
# the model as a black box: context, hooks, forward passes
def model_context(model, n_ctx=None) -> int:
    """The context length to evaluate at: n_ctx if given, else model.config.n_ctx, else model.n_ctx."""
    if n_ctx is None:
        n_ctx = getattr(getattr(model, "config", None), "n_ctx", None) or getattr(model, "n_ctx", None)
    if n_ctx is None:
        raise TinyseqError("the model does not say its context length: pass n_ctx")
    if int(n_ctx) < 2:
        raise TinyseqError(f"the context must hold at least 2 tokens, got {n_ctx}")
    return int(n_ctx)


def probe_hooks(names) -> list[str]:
    """The hook points the belief table probes, in pipeline order: for a transformer the embeddings, the residual
    stream after each block and the final LayerNorm (not the mid-block residuals); for a recurrent net each
    layer's hidden state (not an LSTM's cell state, which the readout never sees). Other models: every hook."""
    return [h for h in names if not h.endswith("hook_resid_mid") and not h.startswith("rnn.hook_c_")]


def final_hook(hooks) -> str:
    """The last layer's output before any final normalisation: where the published probes read the belief."""
    inner = [h for h in hooks if not h.startswith("ln_final")]
    return inner[-1] if inner else hooks[-1]


def hook_label(hook: str) -> str:
    """A reader's name for a hook: 'embeddings', 'after block 2', 'final LayerNorm', 'layer 1 hidden state'."""
    if hook == CONCAT:
        return "all hooks concatenated"
    if hook == "blocks.0.hook_resid_pre":
        return "embeddings"
    if hook.startswith("blocks.") and hook.endswith("hook_resid_post"):
        return f"after block {int(hook.split('.')[1]) + 1}"
    if hook.startswith("blocks.") and hook.endswith("hook_resid_mid"):
        return f"block {int(hook.split('.')[1]) + 1} after attention"
    if hook == "ln_final.hook_normalized":
        return "final LayerNorm"
    if hook.startswith("rnn.hook_h_l"):
        return f"layer {int(hook[len('rnn.hook_h_l'):]) + 1} hidden state"
    return hook


CONCAT = "concat"


def run_model(model, tokens, want_probs=True, want_acts=True):
    """Forward `tokens` (N, T) -> next-token probabilities (N, T, V) float64 (or None), the probed hooks'
    activations {hook: (N, T, D)} float32 (or None), and the hook names in pipeline order.

    A causal model's outputs at position t depend only on x_1..x_t, so equal sequences need one forward
    (distinct_rows), and a model with .prefix_tree_forward (the transformer) computes each distinct prefix once
    when sequences share enough of them (forward_pass says when); the rows are copied back to all N."""
    probe = np.ascontiguousarray(tokens[:1])
    hooks = probe_hooks(list(model.activations(probe).keys())) if want_acts else None
    uniq, inverse = distinct_rows(tokens)                            # (n, T), (N,) or None: every row distinct
    forward = forward_pass(model, uniq, hooks, want_probs, want_acts)
    n = len(uniq)
    probs = acts = None
    for s in range(0, n, FORWARD_CHUNK):
        logits, a = forward(np.ascontiguousarray(uniq[s:s + FORWARD_CHUNK]))
        if want_probs:
            p = softmax(logits, np.float64)                                       # (c, T, V)
            if probs is None:
                probs = np.empty((n,) + p.shape[1:])
            probs[s:s + len(p)] = p
        if want_acts:
            if acts is None:
                acts = {h: np.empty((n,) + v.shape[1:], dtype=np.float32) for h, v in a.items()}
            for h, v in a.items():
                acts[h][s:s + len(v)] = v
    if inverse is not None:                                          # (n, ...) -> (N, ...)
        probs = None if probs is None else probs[inverse]
        acts = None if acts is None else {h: v[inverse] for h, v in acts.items()}
    return probs, acts, hooks


def distinct_rows(tokens):  # (N, T) -> distinct rows (n, T), inverse (N,) with tokens == rows[inverse]
    """The distinct sequences of `tokens` in lexicographic order, and where each sequence is among them: the last
    level of the prefix tree (prefix_levels numbers its nodes in that order). In that order sequences that share
    a prefix are neighbours, so a chunk of them is a few whole subtrees: cut into chunks, the tree computes at
    most T more prefixes per chunk than in one piece. inverse is None when tokens are already distinct and in
    order (then rows is tokens itself: nothing to copy back), as the complete tree full_tree is."""
    if tokens.size == 0:
        return tokens, None
    _, node = prefix_levels(tokens, int(tokens.max()) + 1)[-1]         # (N,) equal sequences share a node
    if np.array_equal(node, np.arange(len(tokens))):
        return tokens, None
    first = np.unique(node, return_index=True)[1]                       # (n,) a sequence of each node
    return tokens[first], node


def forward_pass(model, tokens, hooks, want_probs, want_acts):
    # (N, T), [hook] or None, bool, bool -> chunk (c, T) -> logits (c, T, V) or None, {hook: (c, T, D)} or None
    """How run_model forwards `tokens`, FORWARD_CHUNK sequences at a time:
      - through the prefix tree (model.prefix_tree_forward) when at most train.TREE_MAX_SHARE of the positions
        are distinct prefixes (mess3's full tree of 10 tokens: 15%). On that tree, chunks of 40,960 sequences
        instead of 4,096 took 1.3-2x longer and 0.27 GB more memory (their (c, T, C) outputs are new memory
        each time) to compute 0.1% fewer prefixes (88,581 against 88,693, with rows in distinct_rows' order);
      - else one plain pass, when model.forward(tokens) returns (logits, cache) with the hooks in the cache;
      - else .logits and .activations (two passes)."""
    tree = getattr(model, "prefix_tree_forward", None)
    if tree is not None and train.prefix_tree_pays(tokens):
        return lambda x: tree(x, hooks if want_acts else None)
    probe = np.ascontiguousarray(tokens[:1])
    if want_probs and want_acts and _forward_has_hooks(model, probe, hooks):
        def one_pass(x):
            logits, cache = model.forward(x)
            return logits, {h: cache[h] for h in hooks}
        return one_pass

    def two_passes(x):
        full = model.activations(x) if want_acts else None
        return (model.logits(x) if want_probs else None), (None if full is None else {h: full[h] for h in hooks})
    return two_passes


def _forward_has_hooks(model, probe, hooks) -> bool:
    fwd = getattr(model, "forward", None)
    if fwd is None:
        return False
    try:
        out = fwd(probe)
    except Exception:  # another forward signature: use the public .logits / .activations
        return False
    return isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) and all(h in out[1] for h in hooks)


# ----------------------------------------------------------------------------------------------------------
# the evaluation set
class EvalData:
    """Sequences (N, T), their weights (N,), exact beliefs (N, T, S), the model's next-token probabilities
    (N, T, V), activations {hook: (N, T, D)}, and the split into fit / held-out sequences."""

    def __init__(self, kind, vocab, tokens, weights, beliefs, probs, acts, hooks, facts, frac_fit, seed):
        self.vocab = vocab
        self.kind = kind                  # "enumerated" or "sampled"
        self.tokens = tokens
        self.weights = weights            # probabilities (enumerated) or ones (sampled: already drawn from P)
        self.beliefs = beliefs
        self.probs = probs
        self.acts = acts
        self.hooks = hooks
        self.facts = facts                # what the set is, as numbers (report.describe_set says it)
        self.fit_seq, self.eval_seq = probes.split_sequences(len(tokens), frac_fit, seed)

    @property
    def weighted(self):                   # False for samples and for the uniformly weighted copy
        return self.kind == "enumerated"


def full_tree(V, n):  # -> (V^n, n) every sequence, lexicographic: index = sum_j x_j V^(n-1-j)
    return (np.arange(V ** n)[:, None] // V ** (n - 1 - np.arange(n))[None, :]) % V


def tree_index(tokens, V):  # (N, n) -> (N,) position of each sequence in full_tree
    n = tokens.shape[1]
    return tokens.astype(np.int64) @ (V ** (n - 1 - np.arange(n, dtype=np.int64)))


def enumerated_data(model, proc, n_ctx, frac_fit, seed):
    """Every possible sequence of length n_ctx with its exact probability. The model runs on the complete tree
    (impossible sequences too: the model's own rollouts may generate them); returns (EvalData, tree probs)."""
    V = proc.vocab
    tree = full_tree(V, n_ctx)
    tree_probs, tree_acts, hooks = run_model(model, tree)
    tokens, weights = B.enumerate_sequences(proc, n_ctx)
    idx = tree_index(tokens, V)
    # every sequence possible (mess3): the tree's activations are already in order; copying them (0.3 GB on
    # mess3) took 0.8 s of a fresh process's first analysis
    every = np.array_equal(idx, np.arange(len(tree)))
    acts = tree_acts if every else {h: a[idx] for h, a in tree_acts.items()}
    facts = {"kind": "enumerated", "n_sequences": len(tokens), "n_ctx": n_ctx, "vocab": V, "weighting": "probability"}
    data = EvalData("enumerated", V, tokens, weights, B.belief_states(proc, tokens), tree_probs[idx], acts, hooks,
                    facts, frac_fit, seed)
    return data, tree_probs


def sampled_data(model, proc, n_ctx, n_seq, frac_fit, seed, why=None):
    """n_seq sequences sampled from the process (seeded; weighted equally, since they are drawn from P).
    why: a dict saying why the set is sampled (report.describe_set words it), or None."""
    from tinyseq.processes import sample

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5,)))
    tokens = sample(proc, n_seq, n_ctx, rng)
    probs, acts, hooks = run_model(model, tokens)
    n_distinct = len(np.unique(tokens, axis=0))
    facts = {"kind": "sampled", "n_sequences": n_seq, "n_ctx": n_ctx, "vocab": proc.vocab,
             "n_distinct": n_distinct, **(why or {})}
    return EvalData("sampled", proc.vocab, tokens, np.ones(n_seq), B.belief_states(proc, tokens), probs, acts,
                    hooks, facts, frac_fit, seed)


def activations_on(model, data: EvalData):
    """Another model's (e.g. the random-init control's) activations on the same sequences: {hook: (N, T, D)}."""
    _, acts, hooks = run_model(model, data.tokens, want_probs=False)
    return acts, hooks


# ----------------------------------------------------------------------------------------------------------
# 1. the loss against the Bayes floor
def loss_vs_floor(proc, data: EvalData) -> dict:
    """Mean next-token loss = floor + KL(P* || model) at each position, exact over an enumerated set."""
    P = B.next_token_probs(proc, data.beliefs)  # (N, T, V) exact next-token distribution
    w = data.weights / data.weights.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(P > 0, P * np.log(np.where(P > 0, P, 1.0)), 0.0).sum(axis=-1)               # (N, T)
        kl = np.where(P > 0, P * (np.log(np.where(P > 0, P, 1.0)) - np.log(np.clip(data.probs, 1e-300, None))),
                      0.0).sum(axis=-1)                                                                # (N, T)
    floors, gaps = w @ ent, w @ kl                                                                     # (T,)
    floor, gap = float(floors.mean()), float(gaps.mean())
    return {"mean_nats": floor + gap, "floor_nats": floor, "gap_nats": gap,
            "gap_percent": 100.0 * gap / floor if floor > 0 else float("inf"),
            "floor_exact": data.kind == "enumerated",
            "per_position": [{"position": t + 2, "loss_nats": float(floors[t] + gaps[t]),
                              "floor_nats": float(floors[t]), "gap_nats": float(gaps[t])}
                             for t in range(len(floors))]}


# ----------------------------------------------------------------------------------------------------------
# 2. belief recovery
class Rows:
    """Rows (sequence, position) of some sequences, merged by prefix. A causal model's activations, the exact
    belief and every prediction at a row depend only on the prefix x_1..p+1, so a weighted fit or metric over
    the rows equals the same over the distinct prefixes, each weighted by the summed weight of its rows
    (most short prefixes occur in thousands of sequences: mess3 has 590,490 rows but 88,572 prefixes)."""

    def __init__(self, data, seq_ids, n_pos):
        self.raw_seqs = np.repeat(seq_ids, n_pos)                    # (R,) every row
        self.raw_pos = np.tile(np.arange(n_pos), len(seq_ids))
        self.raw_w = data.weights[self.raw_seqs]
        key = _prefix_keys(data, self.raw_seqs, self.raw_pos)
        if key is None:                                                # prefixes too long to index: no merging
            self.seqs, self.pos, self.w = self.raw_seqs, self.raw_pos, self.raw_w
            self.inv = np.arange(len(self.raw_seqs))
        else:
            _, first, inv = np.unique(key, return_index=True, return_inverse=True)
            self.inv = inv.reshape(-1)                                 # (R,) row -> its prefix
            self.seqs, self.pos = self.raw_seqs[first], self.raw_pos[first]  # (U,) one representative each
            self.w = np.bincount(self.inv, weights=self.raw_w, minlength=len(first))

    @property
    def n_raw(self):
        return len(self.raw_seqs)


def _prefix_keys(data, seqs, pos):  # -> (R,) int64 id of the prefix tokens[seq, :pos+1], or None
    V, T = data.vocab, data.tokens.shape[1]
    if V ** (T + 1) >= 2 ** 62:
        return None
    full = tree_index(data.tokens, V)                                  # (N,) base-V number of each sequence
    t = pos + 1
    offset = np.cumsum([0] + [V ** s for s in range(T + 1)])           # prefixes of length t start at offset[t]
    return offset[t] + full[seqs] // V ** (T - t)


def _fit_rows(data):
    if getattr(data, "_fit", None) is None:
        data._fit = Rows(data, data.fit_seq, data.tokens.shape[1])
    return data._fit


def _heldout_rows(data):
    if getattr(data, "_eval", None) is None:
        data._eval = Rows(data, data.eval_seq, data.tokens.shape[1])
    return data._eval


def belief_probe(data, feats, hook, ridge, control=None, shuffle=False, seed=0):
    """One row of the belief table. feats(seqs, pos) -> (n, D) features at those rows."""
    fit, ev = _fit_rows(data), _heldout_rows(data)
    S = data.beliefs.shape[-1]
    width = feats(fit.seqs[:1], fit.pos[:1]).shape[-1]
    r = ridge if ridge != "auto" else (0.0 if fit.n_raw >= ROWS_PER_FEATURE * width else "cv")
    perm = np.random.default_rng((seed, 2)).permutation
    X, Y, w = feats(fit.seqs, fit.pos), data.beliefs[fit.seqs, fit.pos], fit.w
    if shuffle:   # permute the targets of the (sequence, position) rows, then merge: each prefix's target is the
        #           weighted mean of the labels its rows drew, exactly as if the rows were fitted one by one
        Yraw = data.beliefs[fit.raw_seqs, fit.raw_pos][perm(fit.n_raw)] * fit.raw_w[:, None]
        Y = np.stack([np.bincount(fit.inv, weights=Yraw[:, j], minlength=len(w)) for j in range(S)], axis=1)
        Y /= np.where(w > 0, w, 1.0)[:, None]
    if r == "cv":   # few distinct prefixes for the width: 5-fold CV over the distinct prefixes of the fit part
        r, _ = probes.choose_ridge_cv(X, Y, np.arange(len(Y)), w, seed=seed)
        how = f"ridge {r:g} by 5-fold CV"
    else:
        how = f"ridge {r:g}"
    W, b = probes.fit_affine(X, Y, w, r)
    Ye = data.beliefs[ev.seqs, ev.pos]
    Yhat = probes.predict_affine(feats(ev.seqs, ev.pos), W, b)
    m = probes.mse(Ye, Yhat, ev.w)
    row = {"hook": hook, "label": hook_label(hook), "control": control, "width": int(width),
           "r2": probes.r2_score(Ye, Yhat, ev.w), "mse": m, "rmse": math.sqrt(m), "ridge": float(r),
           "ridge_choice": how, "n_fit_rows": int(fit.n_raw), "n_eval_rows": int(ev.n_raw),
           "n_fit_prefixes": int(len(fit.seqs)), "n_eval_prefixes": int(len(ev.seqs)),
           "mse_by_coordinate": probes.mse_by_coordinate(Ye, Yhat, ev.w).tolist()}
    assert len(row["mse_by_coordinate"]) == S
    return row, (W, b)


def acts_features(data, acts, hook):
    hooks = data.hooks
    if hook == CONCAT:
        return lambda s, p: np.concatenate([acts[h][s, p] for h in hooks], axis=-1).astype(np.float64)
    return lambda s, p: acts[hook][s, p].astype(np.float64)


def belief_recovery(proc, data: EvalData, control=None, ridge="auto", seed=0):
    """Rows for every hook (and their concatenation), then the controls. Returns (rows, fits {hook: (W, b)}).
    control: (EvalData, acts) of the random-init network: the same sequences or a subset (same split)."""
    rows, fits = [], {}
    hooks = list(data.hooks) + ([CONCAT] if len(data.hooks) > 1 else [])
    for h in hooks:
        row, fits[h] = belief_probe(data, acts_features(data, data.acts, h), h, ridge, seed=seed)
        rows.append(row)
    if control is not None:
        cdata, cacts = control
        for h in hooks:
            if h == CONCAT or h in cacts:
                rows.append(belief_probe(cdata, acts_features(cdata, cacts, h), h, ridge,
                                          control="random_init", seed=seed)[0])
    h = final_hook(data.hooks)                                       # where the published control was run
    rows.append(belief_probe(data, acts_features(data, data.acts, h), h, ridge, control="shuffled_labels",
                              shuffle=True, seed=seed)[0])
    row, fits["next_token_output"] = belief_probe(data, lambda s, p: data.probs[s, p], "next_token_output", ridge,
                                                   control="model_output", seed=seed)
    row["label"] = "the model's next-token probabilities"
    rows.append(row)
    bayes = lambda s, p: B.next_token_probs(proc, data.beliefs[s, p])  # noqa: E731
    row, _ = belief_probe(data, bayes, "bayes_next_token", ridge, control="bayes_output", seed=seed)
    row["label"] = "exact Bayes next-token probabilities"
    rows.append(row)
    return rows, fits


def _probed(data, hook, fit, seqs, pos):  # (n, S) probed beliefs at the given rows
    feats = (lambda s, p: data.probs[s, p]) if hook == "next_token_output" else acts_features(data, data.acts, hook)
    return probes.predict_affine(feats(seqs, pos), *fit)


def distances(proc, data: EvalData, fits, seed=0):
    """Pairwise-distance analysis over held-out prefixes (pairs drawn by weight), per hook and for the output."""
    ev = _heldout_rows(data)
    Y = data.beliefs[ev.seqs, ev.pos]
    Q = B.next_token_probs(proc, Y)
    out = []
    for h, fit in fits.items():
        r = probes.pairwise_distance_r2(_probed(data, h, fit, ev.seqs, ev.pos), Y, Q, DISTANCE_PAIRS, seed, ev.w)
        label = "the model's next-token probabilities (control)" if h == "next_token_output" else hook_label(h)
        out.append({"hook": h, "label": label, **r})
    return out


# ----------------------------------------------------------------------------------------------------------
# 3. k steps ahead
def tree_levels(tree_probs, V):  # (V^n, n, V) -> [None, (V, V), (V^2, V), ..., (V^n, V)]: q(. | prefix of length t)
    n = tree_probs.shape[1]
    return [None] + [tree_probs[::V ** (n - t), t - 1] for t in range(1, n + 1)]


def tree_kstep(levels, t, k, V):  # -> (..., V^t, V) the model's k-step marginal after every prefix of length t
    """q_k(x | s) = sum_c q(c | s) q_{k-1}(x | s c), folded from the deepest level up: exact, no sampling.
    levels[s] may carry leading batch axes (..., V^s, V): one tree per row (see continuation_levels)."""
    if t + k - 1 >= len(levels):
        raise TinyseqError(f"a {k}-step rollout after {t} tokens needs {t + k - 1} tokens of context, more than "
                           f"the {len(levels) - 1} evaluated")
    R = levels[t + k - 1]                                              # (V^(t+k-1), V): k = 1 at the deepest prefix
    for s in range(t + k - 2, t - 1, -1):
        R = np.einsum("...pc,...pcx->...px", levels[s], R.reshape(R.shape[:-2] + (V ** s, V, V)))  # sum over c
    return R


def continuation_levels(model, prefix, depth, V):  # (B, t) int -> [(B, 1, V), (B, V, V), ..., (B, V^depth, V)]
    """The model's next-token distribution after prefix + c for every continuation c of 0..depth tokens: the
    levels of a small prefix tree rooted at each prefix (tree_levels' layout with a batch axis, root at 0).
    One batch of the V^depth longest continuations holds every shorter one (the outputs along the way); a
    model with continuation_logits (the transformer's KV-cache forward, the recurrent nets' cell step from the
    parent's state) runs each node of the tree once; any other model runs the V^depth leaves whole."""
    B, t = prefix.shape
    root = softmax(model.logits(prefix)[:, t - 1], np.float64)[:, None]          # (B, 1, V)
    if depth == 0:
        return [root]
    if hasattr(model, "continuation_logits"):
        return [root] + [softmax(z, np.float64) for z in model.continuation_logits(prefix, depth)]
    C = np.array(list(itertools.product(range(V), repeat=depth)), dtype=prefix.dtype)  # (V^depth, depth)
    seqs = np.concatenate([np.repeat(prefix, len(C), axis=0), np.tile(C, (B, 1))], axis=1)
    probs = softmax(model.logits(seqs)[:, t:].reshape(B, len(C), depth, V), np.float64)
    # node c_1..c_j is the output after j continuation tokens of the first leaf below it
    return [root] + [probs[:, ::V ** (depth - j), j - 1] for j in range(1, depth + 1)]


def exact_rollout_depth(V, horizon):  # -> the largest k <= horizon rolled out exactly on a sampled set
    return max(k for k in range(1, horizon + 1) if V ** (k - 1) <= ROLLOUT_MAX_EXACT)


def _continuation_rollout(model, prefixes, k, V, depth, memo):  # (B, t) int -> (B, V)
    """Exact k-step marginal after each prefix; the continuation trees of one prefix length are built once
    (to `depth` - 1 generated tokens) and kept in memo for every k."""
    t = prefixes.shape[1]
    if t not in memo or not np.array_equal(memo[t][0], prefixes):
        step = max(1, ROLLOUT_ROWS // V ** (depth - 1))                            # prefixes per forward
        parts = [continuation_levels(model, prefixes[s:s + step], depth - 1, V)
                 for s in range(0, len(prefixes), step)]
        memo[t] = prefixes, [np.concatenate(lv) for lv in zip(*parts)]
    return tree_kstep(memo[t][1], 0, k, V)[:, 0]


def _rollout_rows(model, data, tree, k, seqs, pos, V, n_ctx, seed, horizon=None, memo=None):
    """(n, V) the model's own k-step marginal at each row (prefix = tokens[seq, :pos+1])."""
    out = np.empty((len(seqs), V))
    if tree is not None:
        levels, idx = tree
        for t in np.unique(pos + 1):
            m = pos + 1 == t
            out[m] = tree_kstep(levels, t, k, V)[idx[seqs[m]] // V ** (n_ctx - t)]
        return out

    def next_token_fn(x):
        return softmax(model.logits(x), np.float64)

    deepest = exact_rollout_depth(V, k if horizon is None else horizon)
    memo = {} if memo is None else memo
    for t in np.unique(pos + 1):
        m = np.flatnonzero(pos + 1 == t)
        uniq, inv = np.unique(data.tokens[seqs[m], :t], axis=0, return_inverse=True)
        if k <= deepest:
            q = _continuation_rollout(model, uniq, k, V, min(deepest, n_ctx - t), memo)
        else:
            q = probes.rollout_kstep(next_token_fn, uniq, t, k, V, n_ctx, max_exact=ROLLOUT_MAX_EXACT,
                                     rng=np.random.default_rng((seed, 7, k, int(t))), n_samples=ROLLOUT_SAMPLES)
        out[m] = q[inv.reshape(-1)]
    return out


def kstep_probe(X, soft, V, w, groups, seed=0):  # (N, D), (N, V), int, (N,), (N,) int -> W (D, V), b (V,), l2
    """The logistic k-step probe fitted on every row, its l2 chosen by CV over whole sequences on the same rows
    (probes.choose_l2_cv), scored by held-out accuracy: the table judges the probe by its argmax, and the l2
    with the best held-out cross-entropy chases calibration at the argmax's expense (mess3, n_ctx 10: up to
    0.0046 further from Bayes). The CV's fits stop at a looser gradient (KSTEP_CV_TOL), on at most
    KSTEP_CV_MAX_ROWS rows of whole sequences."""
    cv = _cv_rows(groups, KSTEP_CV_MAX_ROWS, seed)
    l2, _ = probes.choose_l2_cv(X[cv], soft[cv], V, groups[cv], w[cv], grid=KSTEP_L2_GRID, seed=seed,
                                tol=KSTEP_CV_TOL, score="accuracy")
    W, b = probes.fit_logistic(X, soft, V, w, l2=l2)
    return W, b, l2


def _cv_rows(groups, max_rows, seed):  # (N,) group ids -> row indices of a random subset of whole groups
    if len(groups) <= max_rows:
        return np.arange(len(groups))
    ids, counts = np.unique(groups, return_counts=True)
    order = np.random.default_rng((seed, 19)).permutation(len(ids))
    keep = ids[order[:max(2, int(np.searchsorted(np.cumsum(counts[order]), max_rows)))]]
    return np.flatnonzero(np.isin(groups, keep))


def kstep_accuracy(model, proc, data: EvalData, hook, belief_fit, horizon, tree=None, seed=0, fit_data=None):
    """One row per k: every predictor scored by its expected accuracy under the exact k-step distribution, over
    the held-out rows of `data`. The logistic probe is fitted on the fit rows of `fit_data` (default `data`; the
    large sampled set when the enumerated one is too small to fit on)."""
    fit_data = data if fit_data is None else fit_data
    V, T = proc.vocab, data.tokens.shape[1]
    rng = np.random.default_rng((seed, 11))
    eval_seq = data.eval_seq
    if data.kind == "sampled" and len(eval_seq) > KSTEP_MAX_SEQUENCES:
        eval_seq = np.sort(rng.choice(eval_seq, KSTEP_MAX_SEQUENCES, replace=False))
    feats = acts_features(data, data.acts, hook)
    fit_feats = acts_features(fit_data, fit_data.acts, hook)
    rows, memo = [], {}                                              # memo: continuation trees, shared by all k
    for k in range(1, horizon + 1):
        n_pos = T - k                                                # positions p whose token p + k is in the window
        ev = Rows(data, eval_seq, n_pos)                             # held-out rows, merged by prefix
        w = ev.w / ev.w.sum()
        Pstar = B.kstep_marginal(proc, data.beliefs[ev.seqs, ev.pos], k)  # (U, V) exact P*(x_{t+k} | x_1..t)
        actual = data.tokens[ev.raw_seqs, ev.raw_pos + k]                  # (R,) the token that came
        w_raw = ev.raw_w / ev.raw_w.sum()

        def realised(pred):  # weighted hit rate of per-prefix predictions against the actual tokens
            return float(w_raw @ (pred[ev.inv] == actual))

        base = probes.constant_baseline_accuracy(Pstar, w)
        bayes = probes.bayes_expected_accuracy(Pstar, w)
        # the model's own k-step marginal, by chaining its next-token predictions
        Q = _rollout_rows(model, data, tree, k, ev.seqs, ev.pos, V, T, seed, horizon, memo)
        roll = probes.expected_accuracy(Q.argmax(axis=1), Pstar, w)
        # logistic probe: activation at p -> token at p + k, fitted on every row of the fit sequences. Rows
        # sharing a prefix share the features, so they merge into one row whose soft label is the weighted
        # histogram of the tokens that actually came k steps later: the same objective, far fewer rows.
        fit = Rows(fit_data, fit_data.fit_seq, n_pos)
        labels = fit_data.tokens[fit.raw_seqs, fit.raw_pos + k]
        soft = np.zeros((len(fit.seqs), V))
        np.add.at(soft, (fit.inv, labels), fit.raw_w)
        soft /= np.where(fit.w > 0, fit.w, 1.0)[:, None]
        Wl, bl, l2 = kstep_probe(fit_feats(fit.seqs, fit.pos), soft, V, fit.w, fit.seqs, seed)
        Xe = feats(ev.seqs, ev.pos)
        Qp = probes.predict_proba(Xe, Wl, bl)
        probe_acc = probes.expected_accuracy(Qp.argmax(axis=1), Pstar, w)
        # belief route: probed belief times the exact k-step map
        route = probes.predict_affine(Xe, *belief_fit) @ B.kstep_map(proc, k)
        route_acc = probes.expected_accuracy(route.argmax(axis=1), Pstar, w)
        gain = lambda a: probes.fraction_of_gain(a, base, bayes)  # noqa: E731
        rows.append({
            "k": k, "positions": n_pos, "n_rows": int(ev.n_raw), "n_prefixes": int(len(ev.seqs)),
            "n_kstep_sequences": int(len(eval_seq)),
            "n_probe_fit_rows": int(fit.n_raw), "n_probe_fit_prefixes": int(len(fit.seqs)),
            "baseline_accuracy": base, "bayes_accuracy": bayes,
            "bayes_realised_accuracy": realised(Pstar.argmax(axis=1)),
            "rollout_accuracy": roll, "rollout_gain": gain(roll),
            "probe_accuracy": probe_acc, "probe_gain": gain(probe_acc), "probe_l2": l2,
            "probe_realised_accuracy": realised(Qp.argmax(axis=1)),
            "belief_route_accuracy": route_acc, "belief_route_gain": gain(route_acc),
            "kl_bits": probes.kl_bits(Pstar, Q, w), "probe_kl_bits": probes.kl_bits(Pstar, Qp, w),
        })
    return rows


# ----------------------------------------------------------------------------------------------------------
def _random_init(model, random_init, seed):
    """The random-init control model: given, built by a factory(seed), or rebuilt from model.config."""
    if random_init is None or random_init is False:
        return None
    if random_init == "auto":
        config = getattr(model, "config", None)
        params = getattr(model, "params", None)
        if config is None or params is None:
            return None
        from tinyseq.models import model_from_config
        return model_from_config(config, dtype=getattr(params, "dtype", "float32"), seed=1_000_003 + seed)
    if callable(random_init) and not hasattr(random_init, "activations"):
        return random_init(1_000_003 + seed)
    return random_init


# ----------------------------------------------------------------------------------------------------------
# the stages of `tinyseq probe`, each callable on its own; analyse() at the end runs them in order
def check_options(model, process, n_ctx, horizon, seed, frac_fit, **choices) -> tuple[int, int]:
    """Every option analyse() takes, checked before any work: -> (n_ctx, horizon)."""
    n_ctx = model_context(model, n_ctx)
    if horizon is None:
        horizon = min(DEFAULT_HORIZON, n_ctx - 1)
    if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
        raise TinyseqError(f"horizon must be a positive integer, got {horizon!r}")
    if horizon >= n_ctx:
        raise TinyseqError(f"horizon {horizon} needs {horizon + 1} tokens but the model's context is {n_ctx}: "
                           f"use a horizon of at most {n_ctx - 1}")
    allowed = {"eval_set": ("auto", "enumerate", "sample"), "belief_set": ("auto", "eval", "sample"),
               "weighting": ("probability", "uniform"), "kstep_hook": ("final", "concat")}
    for name, value in choices.items():
        if value not in allowed[name]:
            raise TinyseqError(f"{name} must be one of {', '.join(allowed[name])}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TinyseqError(f"seed must be a non-negative integer, got {seed!r}: e.g. --seed 0")
    if not 0 < frac_fit < 1:
        raise TinyseqError(f"frac_fit must be in (0, 1), got {frac_fit}")
    V = model.logits(np.zeros((1, n_ctx), dtype=np.int64)).shape[-1]
    if V != process.vocab:
        raise TinyseqError(f"the model predicts {V} token values but {process.label} has {process.vocab}: "
                           f"probe it on the process it was trained on")
    return n_ctx, int(horizon)


def evaluation_set(model, process, n_ctx, eval_set="auto", n_sample=SAMPLE_SEQUENCES, frac_fit=0.2, seed=0):
    """Stage 1: every sequence of length n_ctx with its exact probability when there are at most ENUMERATE_MAX
    (then also the model's next-token output after every prefix, for exact k-step rollouts), else a sample.
    -> (EvalData, tree or None)"""
    V = process.vocab
    enumerate_ = eval_set == "enumerate" or (eval_set == "auto" and V ** n_ctx <= ENUMERATE_MAX)
    if enumerate_ and V ** n_ctx > 20 * ENUMERATE_MAX:
        raise TinyseqError(f"{process.label} has {V}^{n_ctx} = {V ** n_ctx:,} sequences of length {n_ctx}: too "
                           f"many to enumerate; use the sampled evaluation set")
    if not enumerate_:
        return sampled_data(model, process, n_ctx, n_sample, frac_fit, seed, why={"too_many": True}), None
    data, tree_probs = enumerated_data(model, process, n_ctx, frac_fit, seed)
    return data, (tree_levels(tree_probs, V), tree_index(data.tokens, V))


def choose_belief_set(model, process, data, belief_set="auto", weighting="probability",
                      n_sample=SAMPLE_SEQUENCES, frac_fit=0.2, seed=0):
    """Stage 2: the sequences the belief probes are fitted and scored on: the evaluation set, or (when it is
    enumerated and too small for the widest probe, e.g. rrxor's 436 sequences) a large sample of the process."""
    n_ctx = data.tokens.shape[1]
    width = sum(data.acts[h].shape[-1] for h in data.hooks)
    fit_rows, need_rows = len(data.fit_seq) * n_ctx, ROWS_PER_FEATURE * width
    if belief_set == "sample" or (belief_set == "auto" and data.kind == "enumerated" and fit_rows < need_rows):
        n_big = max(n_sample, math.ceil(need_rows / (frac_fit * n_ctx)) + 1)
        why = ({"few_fit_rows": fit_rows, "enumerated": len(data.tokens), "probe_width": width}
               if data.kind == "enumerated" else None)
        bdata = sampled_data(model, process, n_ctx, n_big, frac_fit, seed + 1, why=why)
        if data.kind == "enumerated":
            seen = {tuple(s) for s in bdata.tokens[bdata.fit_seq]}
            bdata.facts["shared_fraction"] = float(np.mean([tuple(s) in seen for s in bdata.tokens[bdata.eval_seq]]))
            bdata.facts["distinct_sequences"] = len(data.tokens)
        return bdata
    if data.kind == "enumerated" and weighting == "uniform":
        return _copy(data, weights=np.ones(len(data.tokens)), kind="enumerated (uniform)",
                     facts={**data.facts, "weighting": "uniform"})
    return data


def random_init_control(model, bdata, random_init="auto", seed=0):
    """Stage 3: the same architecture with fresh weights, on (a subset of) the belief-probe set:
    -> (EvalData, {hook: (N, T, D)}) or None. A layer holds the belief only where it beats this control."""
    rmodel = _random_init(model, random_init, seed)
    if rmodel is None:
        return None
    cdata = _subset(bdata, RANDOM_INIT_MAX_SEQUENCES, seed)
    acts, hooks = activations_on(rmodel, cdata)
    if list(hooks) != list(bdata.hooks) and len(hooks) == len(bdata.hooks):
        acts = {h: acts[c] for h, c in zip(bdata.hooks, hooks)}      # pair the hooks by position
    return cdata, acts


DIM_FRACTIONS = (0.90, 0.95, 0.99)   # the dimensions table: components that explain these shares of the variance


def components_for(X, w, fractions=DIM_FRACTIONS) -> list[int]:  # (N, D), (N,) -> [count per fraction]
    """How many principal components of the rows X (weighted by w) explain each fraction of their variance."""
    w = w / w.sum()
    Xc = X - w @ X                                                  # weighted centring
    ev = np.clip(np.linalg.eigvalsh((Xc * w[:, None]).T @ Xc)[::-1], 0.0, None)   # (D,) largest first
    if ev.sum() <= 0:
        return [0 for _ in fractions]
    share = np.cumsum(ev) / ev.sum()
    return [int(np.searchsorted(share, f - 1e-12) + 1) for f in fractions]


def dimensions(data, control=None) -> list[dict]:
    """Stage 5b: per hook, the principal components of its held-out activations needed for 90 / 95 / 99% of
    their variance, next to the same for the random-init network (S - 1 is the belief simplex's dimension)."""
    ev = _heldout_rows(data)
    rows = []
    for h in list(data.hooks) + ([CONCAT] if len(data.hooks) > 1 else []):
        X = acts_features(data, data.acts, h)(ev.seqs, ev.pos)
        row = {"hook": h, "label": hook_label(h), "width": int(X.shape[1]), "fractions": list(DIM_FRACTIONS),
               "components": components_for(X, ev.w), "random_init_components": None}
        if control is not None and (h == CONCAT or h in control[1]):
            cev = _heldout_rows(control[0])
            row["random_init_components"] = components_for(
                acts_features(control[0], control[1], h)(cev.seqs, cev.pos), cev.w)
        rows.append(row)
    return rows


def in_context(proc, data, bdata, loss, control=None) -> dict | None:
    """Stage 6 (mixtures only, else None): learning in context. The loss at each position L next to the
    mixture's floor h(L) and each component's own floor h_k(L); the exact posterior over components after t
    tokens; and an affine probe from the final hook to that posterior, scored on held-out rows by position."""
    if not mixture.is_mixture(proc):
        return None
    n_ctx = data.tokens.shape[1]
    try:                                          # (K, n_ctx): h_k(L) for L = 2..n_ctx + 1
        hk = mixture.component_floors(proc, n_ctx + 1)[:, 1:].T.tolist()
    except TinyseqError:                          # a component's MSP too large at this depth
        hk = [None] * n_ctx
    post = mixture.component_posterior(proc, data.beliefs)             # (N, T, K) exact
    w = data.weights / data.weights.sum()
    hook = final_hook(bdata.hooks)
    trained = posterior_probe(proc, bdata, bdata.acts, hook)
    init = posterior_probe(proc, control[0], control[1], hook) if control and hook in control[1] else None
    return {"components": [c.label for c in proc.components], "weights": proc.weights.tolist(),
            "by_position": [{**p, "component_floors_nats": hk[t],
                             "known_component_floor_nats": None if hk[t] is None else float(proc.weights @ hk[t])}
                            for t, p in enumerate(loss["per_position"])],
            "hook": hook, "hook_label": hook_label(hook),
            "posterior": [{"tokens_read": t + 1,
                           "entropy_nats": float(w @ B.entropy(post[:, t])),
                           "true_component_posterior": float(w @ (post[:, t] ** 2).sum(axis=1)),
                           "probe_mse": trained[t]["mse"], "probe_r2": trained[t]["r2"],
                           "spread_mse": trained[t]["spread_mse"],
                           "random_init_mse": init[t]["mse"] if init else None} for t in range(n_ctx)]}


def posterior_probe(proc, data, acts, hook) -> list[dict]:
    """An affine probe from `hook` to the posterior over components (K,), fitted on every fit row (all
    positions at once), scored per position on the held-out rows: MSE per coordinate, R^2, and the spread
    (the MSE of always answering that position's mean posterior: what the probe must beat)."""
    fit, ev = _fit_rows(data), _heldout_rows(data)
    feats = acts_features(data, acts, hook)
    Y = mixture.component_posterior(proc, data.beliefs[fit.seqs, fit.pos])        # (U, K)
    W, b = probes.fit_affine(feats(fit.seqs, fit.pos), Y, fit.w, 0.0)
    Ye = mixture.component_posterior(proc, data.beliefs[ev.seqs, ev.pos])
    Yhat = probes.predict_affine(feats(ev.seqs, ev.pos), W, b)
    out = []
    for t in range(data.tokens.shape[1]):
        m = ev.pos == t
        w = ev.w[m] / ev.w[m].sum()
        spread = probes.mse(Ye[m], np.broadcast_to(w @ Ye[m], Ye[m].shape), w)
        r2 = probes.r2_score(Ye[m], Yhat[m], w) if spread > POSTERIOR_SPREAD_MIN else None
        out.append({"mse": probes.mse(Ye[m], Yhat[m], w), "r2": r2, "spread_mse": spread})
    return out


def belief_dimensions(process) -> dict:
    """The dimensions the dimensions table compares with: the belief simplex's S - 1 and, for a product, the
    factored sum_i (S_i - 1) next to the joint's prod_i S_i - 1 (the same number as S - 1)."""
    factors = getattr(process, "factors", None)
    return {"simplex": process.n_states - 1,
            "factors_sum": sum(f.n_states - 1 for f in factors) if factors else None}


def factor_recovery(process, bdata, rows, control=None, ridge="auto", seed=0) -> dict | None:
    """Stage 5c, products only: per hook, affine probes to each factor's exact belief (and, from the belief
    table, to the joint belief), the same on the random-init network, and the principal angles between the
    factor subspaces (subspace_angles). The reference row: the joint read linearly from the exact factor beliefs
    side by side, the most a purely factored code gives. None for a process that is not a product."""
    if not is_product(process):
        return None
    fb = factor_beliefs(process, bdata.tokens)                                         # [(N, T, S_i)]
    fdata = [_copy(bdata, beliefs=b) for b in fb]                                      # one copy per factor
    cfdata = ([_copy(control[0], beliefs=b) for b in factor_beliefs(process, control[0].tokens)]
              if control is not None else None)
    joint = {(r["hook"], r["control"]): r for r in rows}
    out = []
    for h in list(bdata.hooks) + ([CONCAT] if len(bdata.hooks) > 1 else []):
        row = {"hook": h, "label": hook_label(h), **_factor_scores(fdata, bdata.acts, h, ridge, seed),
               "joint": _score(joint[(h, None)]), "random_init": None}
        if cfdata is not None and (h == CONCAT or h in control[1]):
            row["random_init"] = {**_factor_scores(cfdata, control[1], h, ridge, seed),
                                  "joint": _score(joint[(h, "random_init")])}
        out.append(row)
    exact = lambda s, p: np.concatenate([b[s, p] for b in fb], axis=-1)  # noqa: E731  (n, sum S_i)
    ceiling = belief_probe(bdata, exact, "factor_beliefs", ridge, control="factor_beliefs", seed=seed)[0]
    return {"hooks": out, "factored_ceiling": _score(ceiling),
            "factor_labels": [f.label for f in process.factors]}


def _factor_scores(fdata, acts, hook, ridge, seed) -> dict:
    """Probes from one hook to each factor's belief, and the angles between the factor subspaces."""
    feats = [acts_features(d, acts, hook) for d in fdata]
    scores = [_score(belief_probe(d, f, hook, ridge, seed=seed)[0]) for d, f in zip(fdata, feats)]
    bases = [factor_subspace(d, f) for d, f in zip(fdata, feats)]
    return {"factors": scores, "angles_degrees": subspace_angles(bases)}


def _score(row) -> dict:
    return {"r2": row["r2"], "mse": row["mse"]}


def factor_subspace(data, feats) -> np.ndarray:  # -> (D, S_i - 1) orthonormal columns
    """Where a factor lives in a hook: the span of the covariance between the activations and the factor's belief
    over the fit rows, Cov(X, b) (D, S_i), i.e. the directions the activations move along when the belief moves.
    (Not the probe's weights: least squares puts its largest weights on the activations' low-variance
    directions, which a LayerNorm output has, so two probes' weights share directions the data barely uses.)
    A belief's coordinates sum to 1, so Cov(X, b) @ 1 = 0 and the span has S_i - 1 dimensions."""
    fit = _fit_rows(data)
    X, Y, w = feats(fit.seqs, fit.pos), data.beliefs[fit.seqs, fit.pos], fit.w / fit.w.sum()
    C = (X - w @ X).T @ ((Y - w @ Y) * w[:, None])                                   # (D, S_i)
    return np.linalg.svd(C, full_matrices=False)[0][:, :min(Y.shape[1] - 1, X.shape[1])]


def subspace_angles(bases) -> list[dict]:
    """Principal angles in degrees (smallest first) between every pair of orthonormal bases (D, r_i): the arccos
    of the singular values of Q_i^T Q_j. 90 degrees everywhere: orthogonal subspaces; 0: a shared direction."""
    out = []
    for i, j in itertools.combinations(range(len(bases)), 2):
        cos = np.clip(np.linalg.svd(bases[i].T @ bases[j], compute_uv=False), 0.0, 1.0)   # largest first
        out.append({"factors": [i + 1, j + 1], "angles": np.degrees(np.arccos(cos)).tolist()})
    return out
SHUFFLE_PERMUTATIONS = 200   # the shuffle control's default number of permutations (`probe --permutations N`)


def shuffle_control(process, data, rows, permutations=SHUFFLE_PERMUTATIONS, seed=0, control=None) -> dict:
    """Stage 5c: for a process whose next-token map has rank < S, the held-out R^2 of the best hook, of all hooks
    concatenated and of the model's own next-token output (and of the random-init network's best hook and
    concatenation, when control is given), before and after the part of the belief the next token cannot see
    is permuted among rows with the same next-token distribution (tinyseq/shuffle.py says why and how). Each
    probe is refitted with the ridge of its row in the belief table. Full rank: skipped, with the reason."""
    S, r = process.n_states, B.observability_ranks(process)["next_token"]
    out = {"permutations": int(permutations), "states": S, "next_token_rank": r, "skipped": None}
    if r >= S:
        return {**out, "skipped": "full rank: the next token sees the whole belief"}
    sides = _shuffle_sides(process, data)
    out["movable_share"], out["ceiling"] = shuffle.movable_share(sides[1]), shuffle.ceiling(sides[1])
    if out["movable_share"] == 0:
        return {**out, "skipped": "the unseen part follows from the next token here"}
    trained = [x for x in rows if x["control"] is None]
    best = max((x for x in trained if x["hook"] != CONCAT), key=lambda x: x["r2"])
    chosen = [best] + [x for x in trained if x["hook"] == CONCAT] + \
             [x for x in rows if x["control"] == "model_output"]
    rng = np.random.default_rng((seed, 23))
    out["rows"] = _shuffled_rows(data, data.acts, chosen, sides, permutations, rng, best)
    if control is not None:          # the same probes on the network before training
        cdata, cacts = control
        init = [x for x in rows if x["control"] == "random_init" and x["hook"] in (best["hook"], CONCAT)]
        csides = sides if cdata is data else _shuffle_sides(process, cdata)
        out["rows"] += _shuffled_rows(cdata, cacts, init, csides, permutations, rng, best)
    return out


def _shuffle_sides(process, data):  # -> (fit, held-out) shuffle.Side of a belief-probe set
    null = B.unseen_basis(process)                                      # (S, S - r)
    return tuple(shuffle.Side(rw.inv, len(rw.seqs), rw.raw_w, data.beliefs[rw.raw_seqs, rw.raw_pos],
                              process.emission, null) for rw in (_fit_rows(data), _heldout_rows(data)))


def _shuffled_rows(data, acts, chosen, sides, permutations, rng, best) -> list[dict]:
    """The shuffle control's rows for the belief-table rows `chosen` (features from acts, or the model's output)."""
    fit_rows, held_rows = _fit_rows(data), _heldout_rows(data)
    features = []
    for row in chosen:
        feats = ((lambda s, p: data.probs[s, p]) if row["hook"] == "next_token_output"
                 else acts_features(data, acts, row["hook"]))
        features.append((feats(fit_rows.seqs, fit_rows.pos), feats(held_rows.seqs, held_rows.pos), row["ridge"]))
    tests = shuffle.permutation_test(*sides, features, permutations, rng)
    return [{"hook": row["hook"], "label": row["label"], "control": row["control"], "width": row["width"],
             "best_hook": row is best, "ridge": row["ridge"], **test} for row, test in zip(chosen, tests)]


def picture(bdata, rows, fits, seed=0, points=False) -> dict:
    """Stage 7: the simplex picture: held-out prefixes' exact beliefs and where the best probe puts them."""
    best = min((r for r in rows if r["control"] is None), key=lambda r: r["mse"])
    ev = _heldout_rows(bdata)
    seqs, pos = ev.raw_seqs, ev.raw_pos
    if len(seqs) > PICTURE_POINTS:
        pick = np.sort(np.random.default_rng((seed, 13)).choice(len(seqs), PICTURE_POINTS, replace=False))
        seqs, pos = seqs[pick], pos[pick]
    out = {"hook": best["hook"], "label": best["label"], "n_points": int(len(seqs)), "mse": best["mse"],
           "rows": "held-out rows, chosen uniformly (not by probability)"}
    if points:
        out["true"] = bdata.beliefs[seqs, pos]
        out["probed"] = _probed(bdata, best["hook"], fits[best["hook"]], seqs, pos)
    return out


def headline(data, rows, kst) -> dict:
    """The numbers a demo states in one line: the final layer's MSE, its random-init control, and the
    largest shortfall of the k-step probe from Bayes."""
    final = final_hook(data.hooks)
    trained = [r for r in rows if r["control"] is None]
    ctrl = {r["hook"]: r for r in rows if r["control"] == "random_init"}
    out = {"final_hook": final, "final_mse": next(r["mse"] for r in trained if r["hook"] == final),
           "final_random_init_mse": ctrl[final]["mse"] if final in ctrl else None}
    if out["final_random_init_mse"] is not None and out["final_mse"] > 0:
        out["final_mse_ratio"] = out["final_random_init_mse"] / out["final_mse"]
    out["max_kstep_probe_shortfall"] = max(r["bayes_accuracy"] - r["probe_accuracy"] for r in kst)
    return out


def analyse(model, process, *, horizon=None, seed=0, eval_set="auto", belief_set="auto", weighting="probability",
            random_init="auto", n_ctx=None, n_sample=SAMPLE_SEQUENCES, frac_fit=0.2, ridge="auto",
            kstep_hook="final", points=False, permutations=None, dimensions_stage=True) -> dict:
    """Every table of `tinyseq probe`, as one JSON-able dict of numbers (see the module docstring for the keys;
    report.describe(result) adds the sentences). The stages above, in order, with their wall times.

    eval_set "auto" | "enumerate" | "sample"; belief_set "auto" | "eval" | "sample" (see choose_belief_set);
    weighting "probability" (enumerated rows by their exact probability) or "uniform" (the published mess3
    protocol); random_init "auto" (model.config with another seed), a model, a factory seed -> model, or None;
    ridge "auto" (0 when the fit part has ROWS_PER_FEATURE rows per dimension, else 5-fold CV), or a number;
    kstep_hook "final" or "concat": the features of the k-step probe and the belief route;
    points True: also the picture's points as arrays (not JSON-able);
    permutations N: also run the shuffle control with N permutations (None: skip the stage, as demo and compare do);
    dimensions_stage False: skip the components-per-hook count (compare does not show it; "dimensions" is then []).
    """
    t_start, timings = time.perf_counter(), {}
    n_ctx, horizon = check_options(model, process, n_ctx, horizon, seed, frac_fit, eval_set=eval_set,
                                   belief_set=belief_set, weighting=weighting, kstep_hook=kstep_hook)
    _check_permutations(permutations)
    clock = _Stopwatch(timings)
    with clock("forward"):
        data, tree = evaluation_set(model, process, n_ctx, eval_set, n_sample, frac_fit, seed)
    with clock("random_init_forward"):
        bdata = choose_belief_set(model, process, data, belief_set, weighting, n_sample, frac_fit, seed)
        control = random_init_control(model, bdata, random_init, seed)
    with clock("belief_probes"):
        rows, fits = belief_recovery(process, bdata, control, ridge, seed)
    with clock("dimensions"):
        dims = dimensions(bdata, control) if dimensions_stage else []
    loss = loss_vs_floor(process, data)
    with clock("in_context"):
        ctx = in_context(process, data, bdata, loss, control)
    with clock("factors"):
        factors = factor_recovery(process, bdata, rows, control, ridge, seed)
    shuf = None
    if permutations is not None:
        with clock("shuffle_control"):
            shuf = shuffle_control(process, bdata, rows, permutations, seed, control)
    _note_wide_probes(bdata, data, rows)
    ranks = B.observability_ranks(process)
    dist = distances(process, bdata, fits, seed) if ranks["next_token"] < process.n_states else None
    khook = final_hook(data.hooks) if kstep_hook == "final" or len(data.hooks) == 1 else CONCAT
    kfit = bdata if bdata.tokens is not data.tokens else data    # not the uniformly weighted copy: labels follow P
    with clock("kstep"):
        kst = kstep_accuracy(model, process, data, khook, fits[khook], horizon, tree, seed, fit_data=kfit)
    return _json_safe({
        "process": process.label, "states": process.n_states, "vocab": process.vocab, "n_ctx": n_ctx,
        "horizon": horizon, "ranks": ranks, "eval_set": _set_summary(data, frac_fit, seed),
        "loss": loss, "in_context": ctx,
        "belief_set": {"kind": bdata.kind, "same_sequences_as_eval_set": bdata.tokens is data.tokens,
                       "n_sequences": int(len(bdata.tokens)), "facts": bdata.facts},
        "belief_protocol_facts": _belief_protocol_facts(bdata, frac_fit, ridge, data, control),
        "belief_recovery": rows, "dimensions": dims, "belief_dimensions": belief_dimensions(process),
        "factors": factors, "distances": dist, "kstep_hook": khook, "kstep_hook_label": hook_label(khook),
        "shuffle_control": shuf,
        "kstep_protocol_facts": _kstep_protocol_facts(data, kfit, khook, tree is not None, kst, model),
        "kstep": kst, "picture": picture(bdata, rows, fits, seed, points), "summary": headline(data, rows, kst),
        "seconds": time.perf_counter() - t_start, "timings": timings})


def _check_permutations(permutations) -> None:
    if permutations is None:
        return
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 1:
        raise TinyseqError(f"permutations must be a positive integer, got {permutations!r}: e.g. --permutations 200")


class _Stopwatch:
    """`with clock("name"):` adds the block's wall time to timings["name"]."""

    def __init__(self, timings):
        self.timings = timings

    def __call__(self, name):
        self.name = name
        return self

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0
        return False


def _note_wide_probes(bdata, data, rows) -> None:
    """A sampled belief set whose fit part has few distinct prefixes for the widest probe: record it."""
    widest = max((r for r in rows if r["control"] is None), key=lambda r: r["width"])
    if bdata.tokens is not data.tokens and widest["n_fit_prefixes"] < ROWS_PER_FEATURE * widest["width"]:
        bdata.facts.update(wide_probe_prefixes=widest["n_fit_prefixes"], wide_probe_width=widest["width"])


def _set_summary(data, frac_fit, seed) -> dict:
    return {"kind": data.kind, "n_sequences": int(len(data.tokens)), "positions": data.tokens.shape[1],
            "weighting": "probability" if data.weighted else "uniform (sampled from the process)",
            "n_fit_sequences": int(len(data.fit_seq)), "n_eval_sequences": int(len(data.eval_seq)),
            "facts": data.facts, "frac_fit": frac_fit, "seed": seed}


def _belief_protocol_facts(bdata, frac_fit, ridge, data, control) -> dict:
    return {"n_fit_sequences": len(bdata.fit_seq), "n_eval_sequences": len(bdata.eval_seq),
            "positions": bdata.tokens.shape[1], "frac_fit": frac_fit, "weighted": bdata.weighted,
            "ridge": ridge, "rows_per_feature": ROWS_PER_FEATURE, "separate_set": bdata.tokens is not data.tokens,
            "n_control_sequences": len(control[0].tokens) if control else 0, "n_sequences": len(bdata.tokens)}


def _kstep_protocol_facts(data, fit_data, hook, exact_tree, rows, model) -> dict:
    return {"exact_tree": exact_tree, "rollout_max_exact": ROLLOUT_MAX_EXACT, "rollout_samples": ROLLOUT_SAMPLES,
            "hook": hook, "hook_label": hook_label(hook), "fit_on_belief_set": fit_data.tokens is not data.tokens,
            "weighted": fit_data.weighted, "l2_grid": list(KSTEP_L2_GRID), "l2_cv_max_rows": KSTEP_CV_MAX_ROWS, "l2_by_k": [r["probe_l2"] for r in rows],
            "n_eval_sequences": len(data.eval_seq), "n_kstep_sequences": rows[0]["n_kstep_sequences"],
            "kv_cache": hasattr(model, "continuation_logits")}


def _json_safe(obj):
    """NaN and infinity (an undefined fraction of gain) become None, so the dict is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _subset(data, n_max, seed):
    """The same set restricted to a random n_max of its sequences, keeping each on its side of the split."""
    N = len(data.tokens)
    if N <= n_max:
        return data
    keep = np.sort(np.random.default_rng((seed, 17)).choice(N, n_max, replace=False))
    new_index = np.full(N, -1)
    new_index[keep] = np.arange(n_max)
    fit, ev = new_index[data.fit_seq], new_index[data.eval_seq]
    return _copy(data, tokens=data.tokens[keep], weights=data.weights[keep], beliefs=data.beliefs[keep],
                 probs=None if data.probs is None else data.probs[keep], acts=None,
                 fit_seq=fit[fit >= 0], eval_seq=ev[ev >= 0])


def _copy(data, **changes):
    d = EvalData.__new__(EvalData)
    d.__dict__.update(data.__dict__)
    d._fit = d._eval = None                                            # merged rows depend on the weights
    d.__dict__.update(changes)
    return d
