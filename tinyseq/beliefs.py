"""Exact belief states and everything that follows from them. Pure math on a process; knows nothing of networks.

Conventions (shared/reference/ANCHORS.md): T[x, i, j] = P(emit x, go to j | in i), shape (V, S, S);
M = sum_x T[x]; E[i, x] = P(next symbol x | state i) = T[x, i, :] @ 1, shape (S, V).

    belief update          eta' = eta @ T[x] / (eta @ T[x] @ 1)
    root belief            the stationary distribution pi
    k-step-ahead marginal  P*(x_{t+k} = x | x_1..t) = eta_t @ M^(k-1) @ T[x] @ 1 = (eta_t @ M^(k-1) @ E)[x]

The belief is a sufficient statistic for the whole future, so every k-step prediction is *linear* in it.
All entropies are in nats unless a name ends in _bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.markov import closed_classes, stationary_distribution
from tinyseq.mixture import mixture_facts
from tinyseq.processes import CATALOGUE, catalogue_process
from tinyseq.product import is_product, product_belief_states, product_facts, product_myopic_entropies

BELIEF_TOL = 1e-9         # beliefs merged for computation when equal after rounding each coordinate to 1e-9
DISTINCT_DECIMALS = 5     # beliefs *counted* as distinct when they differ after rounding to 5 decimals
                          # (the convention behind the published count: 83,500 for mess3 to depth 10)
EXACT_MERGE = 1e-12       # a merge of two beliefs further apart than this is approximate (see msp_graph)
MAX_LEVEL_NODES = 1_000_000  # refuse an MSP level bigger than this up front (memory and seconds)
RANK_TOL = 1e-10          # singular values below RANK_TOL * largest count as zero


# ----------------------------------------------------------------------------------------------------------
# beliefs along sequences
def belief_states(proc, tokens) -> np.ndarray:
    """(B, T) tokens -> (B, T, S) beliefs: position t holds P(state | x_1..x_{t+1}), after reading token t.

    Raises TinyseqError if a sequence is impossible under the process (its belief is undefined there).
    A product's belief is the outer product of its factors' (tinyseq/product.py).
    """
    if is_product(proc):
        return product_belief_states(proc, tokens)
    tokens = _check_process_tokens(proc, tokens)
    B, T = tokens.shape
    out = np.empty((B, T, proc.n_states))
    eta = np.broadcast_to(proc.stationary, (B, proc.n_states))
    for t in range(T):
        unnorm = np.einsum("bi,bij->bj", eta, proc.T[tokens[:, t]])  # (B, S) eta @ T[x]
        z = unnorm.sum(axis=1)                                      # (B,) P(x | past)
        if np.any(z <= 0):
            b = int(np.flatnonzero(z <= 0)[0])
            raise TinyseqError(f"sequence {b} is impossible under {proc.label}: token {t} "
                               f"('{proc.symbols[tokens[b, t]]}') has probability 0 after its prefix")
        eta = unnorm / z[:, None]
        out[:, t] = eta
    return out


def sequence_probs(proc, tokens) -> np.ndarray:
    """(B, T) tokens -> (B,) exact probabilities P(x_1..x_T) = pi @ T[x_1] ... T[x_T] @ 1."""
    tokens = _check_process_tokens(proc, tokens)
    v = np.broadcast_to(proc.stationary, (tokens.shape[0], proc.n_states))
    for t in range(tokens.shape[1]):
        v = np.einsum("bi,bij->bj", v, proc.T[tokens[:, t]])
    return v.sum(axis=1)


def _check_process_tokens(proc, tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None, :]
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise TinyseqError(f"tokens must be a (batch, time) array of integers, got shape {tokens.shape} {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= proc.vocab):
        raise TinyseqError(f"tokens must lie in 0..{proc.vocab - 1} for {proc.label}")
    return tokens


# ----------------------------------------------------------------------------------------------------------
# predictions from a belief: all linear in eta
def next_token_probs(proc, eta) -> np.ndarray:
    """(..., S) beliefs -> (..., V) Bayes next-token distribution eta @ E."""
    return np.asarray(eta) @ proc.emission


def kstep_map(proc, k: int) -> np.ndarray:
    """(S, V) matrix M^(k-1) @ E: belief -> distribution of the symbol k steps ahead (k = 1 is next token)."""
    if k < 1:
        raise TinyseqError(f"k must be >= 1 (k = 1 is the next token), got {k}")
    return np.linalg.matrix_power(proc.M, k - 1) @ proc.emission


def kstep_marginal(proc, eta, k: int) -> np.ndarray:
    """(..., S) beliefs -> (..., V) P*(x_{t+k} | past) = eta @ M^(k-1) @ E."""
    return np.asarray(eta) @ kstep_map(proc, k)


def joint_future(proc, eta, n: int) -> np.ndarray:
    """(..., S) beliefs -> (..., V, ..., V) (n symbol axes): P(x_{t+1..t+n} | past) = eta T[x1] ... T[xn] 1."""
    if n < 1:
        raise TinyseqError(f"n must be >= 1, got {n}")
    eta = np.asarray(eta, dtype=np.float64)
    lead = eta.shape[:-1]
    V, S = proc.vocab, proc.n_states
    if V ** n * max(1, int(np.prod(lead))) > 50_000_000:
        raise TinyseqError(f"joint of the next {n} tokens has {V}^{n} entries per belief: too large; use a smaller n")
    v = eta.reshape(-1, 1, S)                       # (N, W=1, S) row vectors eta T[w]
    for _ in range(n):
        v = np.einsum("nws,xsj->nwxj", v, proc.T)   # (N, W, V, S): append one symbol
        v = v.reshape(v.shape[0], -1, S)
    return v.sum(axis=-1).reshape(lead + (V,) * n)


def update(proc, eta, x: int) -> np.ndarray:
    """One Bayes update: (..., S) belief, symbol x -> (..., S) posterior after seeing x."""
    u = np.asarray(eta) @ proc.T[x]
    return u / u.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# the mixed-state presentation (MSP): beliefs reached by every prefix, level by level
@dataclass
class MSPLevel:
    beliefs: np.ndarray   # (K, S) distinct beliefs reached by prefixes of this length
    probs: np.ndarray     # (K,) total probability of the prefixes that reach each


@dataclass
class MSP:
    levels: list          # MSPLevel for depth 0..L (depth 0 is the stationary root)
    n_distinct: int       # distinct beliefs over all depths 0..L (rounded to DISTINCT_DECIMALS)
    distinct: np.ndarray  # (n_distinct, S)
    finite: bool          # True when the belief set closed (no new belief at some depth <= L)
    closed_at: int | None  # first depth that produced no new belief


def _keys(beliefs):
    return np.round(beliefs / BELIEF_TOL).astype(np.int64)


def _children(proc, beliefs, probs):
    """All one-symbol extensions of each node: (K*V', S) beliefs and their path probabilities (zeros dropped)."""
    V = proc.vocab
    unnorm = np.einsum("ki,xij->kxj", beliefs, proc.T)   # (K, V, S)
    z = unnorm.sum(axis=2)                               # (K, V) P(x | belief)
    p = probs[:, None] * z                               # (K, V) path probabilities
    keep = z > 0
    child = unnorm[keep] / z[keep][:, None]
    return child, p[keep]


def _merge(beliefs, probs):
    """Merge equal beliefs (tolerance BELIEF_TOL), summing their probabilities."""
    keys = _keys(beliefs)
    uniq, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    return beliefs[first], np.bincount(inv, weights=probs, minlength=len(uniq))


class MSPTooLarge(TinyseqError):
    """An MSP level past MAX_LEVEL_NODES: `fits` is the deepest level that can be enumerated, and `partial()`
    the MSP to that depth, from the levels already built (no second enumeration)."""

    def __init__(self, message: str, fits: int, level: int, nodes: int, levels: list, closed_at):
        super().__init__(message)
        self.fits, self.level, self.nodes = fits, level, nodes
        self._levels, self._closed_at = levels, closed_at

    def partial(self) -> MSP:
        return _msp_of(self._levels, self._closed_at)


def msp(proc, depth: int) -> MSP:
    """Enumerate the mixed-state presentation to `depth`, merging equal beliefs within each level."""
    if depth < 0:
        raise TinyseqError(f"depth must be >= 0, got {depth}")
    levels = [MSPLevel(proc.stationary[None, :].copy(), np.ones(1))]
    seen = {tuple(k) for k in _keys(levels[0].beliefs)}
    closed_at = None
    for d in range(1, depth + 1):
        prev = levels[-1]
        if len(prev.beliefs) * proc.vocab > MAX_LEVEL_NODES:
            raise MSPTooLarge(f"depth {depth} is too large for {proc.label}: level {d} would hold about "
                              f"{len(prev.beliefs) * proc.vocab:,} beliefs; use a depth <= {d - 1}",
                              fits=d - 1, level=d, nodes=len(prev.beliefs) * proc.vocab, levels=levels,
                              closed_at=closed_at)
        child, p = _children(proc, prev.beliefs, prev.probs)
        b, p = _merge(child, p)
        levels.append(MSPLevel(b, p))
        new = [k for k in map(tuple, _keys(b)) if k not in seen]
        seen.update(new)
        if not new and closed_at is None:
            closed_at = d
    return _msp_of(levels, closed_at)


def _msp_of(levels, closed_at) -> MSP:
    """The MSP of levels 0..L: the distinct beliefs over all of them (rounded to DISTINCT_DECIMALS)."""
    stacked = np.vstack([lvl.beliefs for lvl in levels])
    _, first = np.unique(np.round(stacked, DISTINCT_DECIMALS), axis=0, return_index=True)
    distinct = stacked[np.sort(first)]
    return MSP(levels=levels, n_distinct=len(distinct), distinct=distinct,
               finite=closed_at is not None, closed_at=closed_at)


def msp_to(m: MSP, depth: int) -> MSP:
    """The MSP to a smaller depth, cut from a deeper one (the same levels, no new enumeration)."""
    closed_at = m.closed_at if m.closed_at is not None and m.closed_at <= depth else None
    return _msp_of(m.levels[:depth + 1], closed_at)


def msp_graph(proc, max_states: int = 5000, max_depth: int = 200):
    """The MSP as a graph over distinct beliefs, explored breadth-first until it closes.

    Returns (beliefs (K, S), trans (K, K) symbol-summed transition probabilities, finite). `finite` is False
    when more than max_states beliefs or max_depth levels were needed (then the graph is a truncation), or
    when the walk only closed by merging beliefs that differ by more than EXACT_MERGE: a countably infinite
    MSP whose beliefs converge geometrically (like nond's) would otherwise look finite at any tolerance.
    """
    index = {}
    beliefs = []
    edges = []  # (from, to, prob)
    approximate = False

    def add(b):
        nonlocal approximate
        k = tuple(_keys(b[None])[0])
        if k not in index:
            index[k] = len(beliefs)
            beliefs.append(b)
            return index[k], True
        if np.abs(beliefs[index[k]] - b).max() > EXACT_MERGE:
            approximate = True
        return index[k], False

    frontier = [add(proc.stationary.copy())[0]]
    depth = 0
    while frontier:
        depth += 1
        if depth > max_depth or len(beliefs) > max_states:
            return np.array(beliefs), None, False
        nxt = []
        for n in frontier:
            eta = beliefs[n]
            for x in range(proc.vocab):
                u = eta @ proc.T[x]
                z = u.sum()
                if z <= 0:
                    continue
                m, is_new = add(u / z)
                edges.append((n, m, z))
                if is_new:
                    nxt.append(m)
        frontier = nxt
    if approximate:
        return np.array(beliefs), None, False
    K = len(beliefs)
    trans = np.zeros((K, K))
    for a, b, z in edges:
        trans[a, b] += z
    return np.array(beliefs), trans, True


def _recurrent_stationary(trans: np.ndarray, start: int = 0) -> np.ndarray:
    """Long-run (Cesaro) distribution of the MSP chain started at the root: mass on the recurrent beliefs."""
    K = trans.shape[0]
    classes = closed_classes(trans)
    if len(classes) == 1:
        cls = classes[0]
        pi = np.zeros(K)
        pi[cls] = stationary_distribution(trans[np.ix_(cls, cls)])
        return pi
    # several closed classes: weight each class's stationary law by its absorption probability from the root
    pi = np.zeros(K)
    in_class = np.zeros(K, dtype=bool)
    for cls in classes:
        in_class[cls] = True
    trans_idx = np.flatnonzero(~in_class)
    for cls in classes:
        if start in cls:
            absorb = 1.0
        elif start in trans_idx:
            Q = trans[np.ix_(trans_idx, trans_idx)]
            R = trans[np.ix_(trans_idx, cls)].sum(axis=1)
            h = np.linalg.solve(np.eye(len(trans_idx)) - Q, R)
            absorb = h[list(trans_idx).index(start)]
        else:
            absorb = 0.0
        pi[cls] += absorb * stationary_distribution(trans[np.ix_(cls, cls)])
    return pi


# ----------------------------------------------------------------------------------------------------------
# entropies
def entropy(p, axis=-1):  # (..., K) probabilities -> (...) their entropy in nats (0 log 0 = 0)
    p = np.asarray(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=axis)


def myopic_entropies(proc, depth: int, m: MSP | None = None) -> np.ndarray:
    """h(L) = H(X_L | X_1..L-1) for L = 1..depth, in nats: the best possible expected loss at position L.

    Exact: h(L) = sum over beliefs after L-1 symbols of P(belief) * H(next-token distribution).
    A product's h(L) is the sum of its factors' (its joint MSP is never enumerated).
    """
    if depth < 1:
        raise TinyseqError(f"depth must be >= 1, got {depth}")
    if is_product(proc):
        return product_myopic_entropies(proc, depth)
    m = m if m is not None and len(m.levels) >= depth else msp(proc, depth - 1)
    E = proc.emission
    return np.array([float(lvl.probs @ entropy(lvl.beliefs @ E)) for lvl in m.levels[:depth]])


def block_entropies(proc, depth: int, m: MSP | None = None) -> np.ndarray:
    """H(L) = H(X_1..X_L) for L = 1..depth in nats (H(L) = sum of h(1..L), the chain rule)."""
    return np.cumsum(myopic_entropies(proc, depth, m))


def entropy_rate(proc, depth: int = 10, m: MSP | None = None, graph=None) -> tuple[float, bool]:
    """(h_mu in nats, exact). Exact when the MSP is finite (average next-token entropy over recurrent
    beliefs); otherwise the estimate h(depth), which converges from above. m: an MSP already enumerated to at
    least depth - 1, reused for that estimate; graph: msp_graph(proc) if already built."""
    beliefs, trans, finite = graph or msp_graph(proc)
    if finite:
        pi = _recurrent_stationary(trans)
        return float(pi @ entropy(beliefs @ proc.emission)), True
    return float(myopic_entropies(proc, depth, m)[-1]), False


def statistical_complexity(proc, graph=None) -> float | None:
    """C_mu in nats: entropy of the long-run distribution over recurrent beliefs, when the MSP is finite.
    graph: msp_graph(proc) if already built."""
    beliefs, trans, finite = graph or msp_graph(proc)
    if not finite:
        return None
    pi = _recurrent_stationary(trans)
    return float(entropy(pi[pi > 0]))


def excess_entropy_estimate(h: np.ndarray, rate: float) -> float:
    """E ~ sum_L (h(L) - h_mu) over the computed L: how much the past tells about the future (nats)."""
    return float(np.sum(h - rate))


# ----------------------------------------------------------------------------------------------------------
# k-step accuracy: how well can anyone predict x_{t+k} after seeing x_1..t?
def kstep_bayes_accuracy(proc, context: int, horizon: int, m: MSP | None = None) -> np.ndarray:
    """(horizon,) E[max_x P*(x_{t+k} | x_1..t)] with t = context, for k = 1..horizon (exact, no sampling)."""
    if context < 0 or horizon < 1:
        raise TinyseqError(f"need context >= 0 and horizon >= 1, got context={context}, horizon={horizon}")
    m = m if m is not None and len(m.levels) > context else msp(proc, context)
    lvl = m.levels[context]
    return np.array([float(lvl.probs @ (lvl.beliefs @ kstep_map(proc, k)).max(axis=1))
                     for k in range(1, horizon + 1)])


def kstep_marginal_accuracy(proc, horizon: int) -> np.ndarray:
    """(horizon,) accuracy of always guessing the most frequent symbol (the no-context baseline)."""
    p = proc.stationary @ proc.emission   # stationary symbol frequencies: the same for every k
    return np.full(horizon, float(p.max()))


# ----------------------------------------------------------------------------------------------------------
# observability: how much of the belief each kind of prediction reveals
def _rank(A) -> int:
    s = np.linalg.svd(np.asarray(A, dtype=np.float64), compute_uv=False)
    return int((s > RANK_TOL * max(s[0], 1e-300)).sum()) if s.size else 0


RANK_HORIZON = 3  # futures of up to 3 tokens: enough to show rrxor's XOR (and the convention of ANCHORS.md)


def observability_ranks(proc, n: int = RANK_HORIZON) -> dict:
    """Ranks of linear maps from the belief (R^S) to predictions about the next n tokens.

    next_token      rank of E                                       (belief -> next-token distribution)
    kstep_marginals rank of [E, M E, ..., M^(n-1) E]                 (belief -> each k-step marginal, k <= n)
    joint_futures   rank of {T[w] 1 : words w of length <= n}        (belief -> joint of the next n tokens)
    With n = S both spans have stopped growing (then joint_futures is the full observable rank).
    """
    S = proc.n_states
    if n < 1:
        raise TinyseqError(f"rank horizon must be >= 1, got {n}")
    E = proc.emission
    kst = np.hstack([np.linalg.matrix_power(proc.M, k) @ E for k in range(n)])
    basis = E.copy()                               # (S, r) spans T[w] 1 for |w| = 1
    for _ in range(1, n):
        cand = np.hstack([basis] + [proc.T[x] @ basis for x in range(proc.vocab)])
        u, s, _ = np.linalg.svd(cand, full_matrices=False)
        r = int((s > RANK_TOL * s[0]).sum())
        if r == basis.shape[1]:
            break
        basis = u[:, :r]
    return {"next_token": _rank(E), "kstep_marginals": _rank(kst), "joint_futures": _rank(basis),
            "states": S, "horizon": n}



def unseen_basis(proc) -> np.ndarray:
    """(S, S - r) orthonormal basis N of the null space of E^T (r = rank of E): the part of a belief b that the
    next-token distribution b @ E cannot see is its projection b @ N @ N.T (so that part @ E = 0), and the rest,
    b - b @ N @ N.T, is a function of b @ E. No columns when E has full rank S (the next token sees everything)."""
    u = np.linalg.svd(proc.emission, full_matrices=True)[0]             # E = u diag(s) v': u[:, :r] spans E's range
    return u[:, _rank(proc.emission):]


# ----------------------------------------------------------------------------------------------------------
# every sequence of a length with its exact probability (the evaluation set when V^L is small)
def enumerate_sequences(proc, length: int, max_sequences: int = 2_000_000):
    """All sequences of `length` with positive probability: tokens (N, length) int64, probs (N,) summing to 1."""
    V = proc.vocab
    if V ** length > max_sequences:
        raise TinyseqError(f"{proc.label} has {V}^{length} = {V ** length:,} sequences of length {length}: "
                           f"too many to enumerate (limit {max_sequences:,}); sample instead")
    tokens = np.zeros((1, 0), dtype=np.int64)
    vec = proc.stationary[None, :]                 # (N, S) row vectors pi @ T[x_1..t]
    for _ in range(length):
        nxt = np.einsum("ni,xij->nxj", vec, proc.T)          # (N, V, S)
        N = tokens.shape[0]
        tokens = np.concatenate([np.repeat(tokens, V, axis=0), np.tile(np.arange(V), N)[:, None]], axis=1)
        vec = nxt.reshape(N * V, -1)
        keep = vec.sum(axis=1) > 0
        tokens, vec = tokens[keep], vec[keep]
    return tokens, vec.sum(axis=1)


# ----------------------------------------------------------------------------------------------------------
MAX_FACTS_HORIZON = 1000     # largest --horizon / --rank-horizon of process_facts


DEFAULT_FACTS_DEPTH = 10     # process_facts' depth and context when not given (lowered if the MSP is too big)


def process_facts(proc, depth: int | None = None, horizon: int = 5, context: int | None = None,
                  rank_horizon: int = RANK_HORIZON) -> dict:
    """Everything `tinyseq process show` prints, as one JSON-able dict (nats unless the key says bits).
    depth, context: None = DEFAULT_FACTS_DEPTH, or the deepest MSP level that fits (MAX_LEVEL_NODES) if that
    is less (e.g. 9 for a 4-symbol process whose beliefs never merge); the dict's "depth_note" then says so."""
    given = {"depth": depth, "context": context}
    depth = DEFAULT_FACTS_DEPTH if depth is None else depth
    context = DEFAULT_FACTS_DEPTH if context is None else context
    _check_facts_options(depth, horizon, context, rank_horizon)
    if is_product(proc):                     # every fact from the factors' (tinyseq/product.py)
        return product_facts(proc, given["depth"], horizon, given["context"], rank_horizon)
    m, depth, context, note = _msp_that_fits(proc, depth, context, given)
    h = myopic_entropies(proc, depth, m)
    graph = msp_graph(proc)                  # explored once, for the entropy rate and C_mu
    rate, exact = entropy_rate(proc, depth, m, graph)
    ln2 = math.log(2)
    bayes = kstep_bayes_accuracy(proc, context, horizon, m)
    base = kstep_marginal_accuracy(proc, horizon)
    m_depth = m if depth >= context else msp_to(m, depth)
    cmu = statistical_complexity(proc, graph)
    return {
        "name": proc.label,
        "states": proc.n_states,
        "vocab": proc.vocab,
        "symbols": list(proc.symbols),
        "stationary": proc.stationary.tolist(),
        "depth": depth,
        "myopic_entropy_nats": h.tolist(),
        "myopic_entropy_bits": (h / ln2).tolist(),
        "block_entropy_nats": np.cumsum(h).tolist(),
        "entropy_rate_nats": rate,
        "entropy_rate_bits": rate / ln2,
        "entropy_rate_exact": exact,
        "excess_entropy_nats_estimate": excess_entropy_estimate(h, rate),
        "msp_states": int(m_depth.n_distinct),
        "msp_finite": cmu is not None,
        "statistical_complexity_nats": cmu,
        "context": context,
        "horizon": horizon,
        "kstep_bayes_accuracy": bayes.tolist(),
        "kstep_marginal_accuracy": base.tolist(),
        "ranks": observability_ranks(proc, rank_horizon),
        "belief_tolerance": BELIEF_TOL,
        "mixture": mixture_facts(proc, depth, m),       # None unless proc is a mixture
        "depth_note": note,                             # None unless the default depth/context was lowered
    }


def _check_facts_options(depth, horizon, context, rank_horizon) -> None:
    for name, v, lo in (("depth", depth, 1), ("horizon", horizon, 1), ("context", context, 0),
                        ("rank-horizon", rank_horizon, 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise TinyseqError(f"--{name} must be an integer >= {lo}, got {v}")
    for name, v in (("horizon", horizon), ("rank-horizon", rank_horizon)):
        if v > MAX_FACTS_HORIZON:   # one matrix power per k: a million of them is minutes for no new fact
            raise TinyseqError(f"--{name} {v} is too large: use at most {MAX_FACTS_HORIZON}")


def _msp_that_fits(proc, depth, context, given):  # -> (MSP to max(depth, context), depth, context, note or None)
    """The MSP the facts need. Too big: a default depth or context comes down to the deepest level that fits
    (with a note saying so); a given one is refused, naming the option(s) to lower."""
    try:
        return msp(proc, max(depth, context)), depth, context, None
    except MSPTooLarge as e:
        value = {"depth": depth, "context": context}
        too_big = [k for k in value if value[k] > e.fits]
        refused = [k for k in too_big if given[k] is not None]
        if refused:
            raise TinyseqError(f"{' and '.join(f'--{k} {value[k]}' for k in refused)}: too large for "
                               f"{proc.label}: level {e.level} of its mixed-state presentation would hold about "
                               f"{e.nodes:,} beliefs; use {' and '.join(f'--{k}' for k in refused)} <= {e.fits}"
                               ) from None
        lowered = " and ".join(f"{k} {e.fits}" for k in too_big)          # defaults only, from here
        note = (f"{lowered}, not {DEFAULT_FACTS_DEPTH}: level {e.level} of the mixed-state presentation would "
                f"hold about {e.nodes:,} beliefs")
        return e.partial(), min(depth, e.fits), min(context, e.fits), note     # max of the two is e.fits


# ----------------------------------------------------------------------------------------------------------
def catalogue_summary(depth: int = 10) -> list[dict]:
    """One row per catalogue process at its default parameters (for `tinyseq processes`)."""
    rows = []
    for name, (_, blurb) in CATALOGUE.items():
        p = catalogue_process(name)
        m = msp(p, depth)
        rate, exact = entropy_rate(p, depth, m)
        ranks = observability_ranks(p)
        rows.append(dict(name=p.label, states=p.n_states, vocab=p.vocab, entropy_rate_nats=rate,
                         entropy_rate_bits=rate / math.log(2), entropy_rate_exact=exact,
                         msp_states_depth10=m.n_distinct, msp_finite=m.finite, ranks=ranks, about=blurb))
    return rows
