"""Mixtures of processes: each sequence is drawn from one component, chosen once with its weight.

    {"mixture": [["mess3", 0.5], ["mess3:x=0.15,a=0.6", 0.5]]}

A component is anything that names a plain process: a catalogue spec, a JSON file path, or a {name, symbols,
T} object. The components must share the vocabulary (same symbols, in the same order).

A mixture is itself a hidden Markov process. Its states are the components' states side by side, T is
block-diagonal (no transition ever leaves a component), and it starts from

    init = (w_1 pi_1, w_2 pi_2, ..., w_K pi_K)         (S,), S = S_1 + ... + S_K

the weights times each component's stationary distribution. That start is stationary but not the only one
(one closed class per component), so the mixture states it: processes.make_process(init=...). Then every exact
fact follows from the ordinary machinery (tinyseq/beliefs.py) on the belief over all S states:

    posterior over components   P(k | x_1..t) = the belief's mass on component k's states
    h(L) of the mixture         H(X_L | X_1..L-1): keeps falling with L as the context reveals the component
    h_k(L)                      component k's own floor (that component alone); sum_k w_k h_k(L) is the floor
                                of a predictor told the component, and
                                h(L) - sum_k w_k h_k(L) = H(C | X_1..L-1) - H(C | X_1..L)
                                (what token L reveals about the component C).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.processes import ROW_SUM_TOL, Process, make_process, parse_process


@dataclass(repr=False)
class Mixture(Process):
    """A Process whose T is block-diagonal over its components, started from weights x their stationary laws."""

    components: list = field(default_factory=list)   # K component Processes
    weights: np.ndarray = None                        # (K,) summing to 1

    @property
    def label(self) -> str:
        return "mixture(" + " + ".join(f"{w:g} {c.label}" for w, c in zip(self.weights, self.components)) + ")"

    @property
    def component_of_state(self) -> np.ndarray:      # (S,) int: which component each state belongs to
        return np.repeat(np.arange(len(self.components)), [c.n_states for c in self.components])

    def to_spec(self) -> dict:
        """The JSON form, each component whole (checkpoints store it, so a probe rebuilds the same mixture)."""
        return {"mixture": [[c.to_spec(), float(w)] for c, w in zip(self.components, self.weights)]}

    def __repr__(self) -> str:
        return f"Mixture({self.label}, states={self.n_states}, vocab={self.vocab})"


# ----------------------------------------------------------------------------------------------------------
# building and checking
def make_mixture(components, weights, where="mixture") -> Mixture:
    """A Mixture of plain Processes with weights (K,): block-diagonal T, start = weights x stationary laws."""
    first = components[0]
    for k, c in enumerate(components):
        if isinstance(c, Mixture):
            raise TinyseqError(f"{where}: component {k + 1} is itself a mixture; nested mixtures are not "
                               f"supported: list all the components in one mixture")
        if list(c.symbols) != list(first.symbols):
            raise TinyseqError(f"{where}: the components must share the vocabulary, but component {k + 1} "
                               f"({c.label}) has symbols {', '.join(c.symbols)} and component 1 ({first.label}) "
                               f"has {', '.join(first.symbols)}")
    V, S = first.vocab, sum(c.n_states for c in components)
    T = np.zeros((V, S, S))                                          # (V, S, S) block-diagonal
    init = np.zeros(S)
    start = 0
    for c, w in zip(components, weights):
        block = slice(start, start + c.n_states)
        T[:, block, block] = c.T
        init[block] = w * c.stationary
        start += c.n_states
    proc = make_process(T, name="mixture", symbols=list(first.symbols), init=init)
    return Mixture(**vars(proc), components=list(components), weights=np.asarray(weights, dtype=np.float64))


def mixture_from_dict(d: dict, where="process spec") -> Mixture:
    """{"mixture": [[component, weight], ...]} -> Mixture; every problem one TinyseqError line."""
    unknown = set(d) - {"mixture"}
    if unknown:
        raise TinyseqError(f"{where}: a mixture has only the key 'mixture', got also {sorted(unknown)}")
    items = d["mixture"]
    if not isinstance(items, list) or not items:
        raise TinyseqError(f"{where}: 'mixture' must be a non-empty list of [component, weight] pairs, e.g. "
                           f'{{"mixture": [["mess3", 0.5], ["mess3:x=0.15,a=0.6", 0.5]]}}')
    components, weights = [], []
    for k, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 2:
            raise TinyseqError(f"{where}: mixture entry {k + 1} must be a [component, weight] pair, got {item!r}")
        spec, w = item
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise TinyseqError(f"{where}: the weight of mixture component {k + 1} is {w!r}; weights must be "
                               f"positive numbers")
        if isinstance(spec, dict) and "mixture" in spec:
            raise TinyseqError(f"{where}: component {k + 1} is itself a mixture; nested mixtures are not "
                               f"supported: list all the components in one mixture")
        if not isinstance(spec, (str, dict)):
            raise TinyseqError(f"{where}: mixture component {k + 1} must be a process spec (a name like 'mess3', "
                               f"a .json path, or a {{name, symbols, T}} object), got {type(spec).__name__}")
        try:
            components.append(parse_process(spec))
        except TinyseqError as e:
            raise TinyseqError(f"{where}: mixture component {k + 1}: {e}") from None
        if not isinstance(components[-1], Process):
            raise TinyseqError(f"{where}: mixture component {k + 1} ({spec}) is a task, not a hidden Markov "
                               f"process; a mixture's components are processes")
        weights.append(float(w))
    if abs(sum(weights) - 1.0) > ROW_SUM_TOL:
        raise TinyseqError(f"{where}: the mixture weights sum to {sum(weights):.12g}, not 1 "
                           f"(tolerance {ROW_SUM_TOL:g})")
    return make_mixture(components, weights, where)


def is_mixture(proc) -> bool:
    return isinstance(proc, Mixture)


# ----------------------------------------------------------------------------------------------------------
# exact facts
def component_posterior(mix: Mixture, beliefs) -> np.ndarray:  # (..., S) -> (..., K)
    """P(component k | the tokens read): the belief's mass on component k's states."""
    onehot = np.eye(len(mix.components))[mix.component_of_state]     # (S, K)
    return np.asarray(beliefs) @ onehot


def component_floors(mix: Mixture, depth: int) -> np.ndarray:  # -> (K, depth)
    """h_k(L), L = 1..depth: each component's own floor, as if it were the only process."""
    from tinyseq.beliefs import myopic_entropies
    return np.stack([myopic_entropies(c, depth) for c in mix.components])


def posterior_by_position(mix: Mixture, depth: int, m=None) -> dict:
    """After reading L = 0..depth tokens: H(C | X_1..L) (nats) and E[P(true component | X_1..L)], exact.

    E[P(true | x)] = sum_x P(x) sum_k P(k | x)^2: how much weight a Bayes reader puts on the right component."""
    from tinyseq.beliefs import entropy, msp
    m = m if m is not None and len(m.levels) > depth else msp(mix, depth)
    ent, true = [], []
    for lvl in m.levels[:depth + 1]:
        post = component_posterior(mix, lvl.beliefs)                # (n, K)
        ent.append(float(lvl.probs @ entropy(post)))
        true.append(float(lvl.probs @ (post ** 2).sum(axis=1)))
    return {"entropy_nats": ent, "true_component_posterior": true}


def mixture_facts(proc, depth: int, m=None) -> dict | None:
    """What `process show` adds for a mixture (None for any other process): h(L), each h_k(L), the floor of a
    reader told the component, and the posterior over components by position, L = 1..depth. m: the mixture's
    MSP to at least `depth`, if already computed."""
    if not is_mixture(proc):
        return None
    from tinyseq.beliefs import entropy_rate, msp, myopic_entropies
    m = m if m is not None and len(m.levels) > depth else msp(proc, depth)
    hk = component_floors(proc, depth)
    post = posterior_by_position(proc, depth, m)
    rates = [entropy_rate(c, depth) for c in proc.components]
    return {"components": [c.label for c in proc.components], "weights": proc.weights.tolist(),
            "myopic_entropy_nats": myopic_entropies(proc, depth, m).tolist(),
            "component_myopic_entropy_nats": hk.tolist(),
            "known_component_floor_nats": (proc.weights @ hk).tolist(),
            "posterior_entropy_nats": post["entropy_nats"][1:],
            "true_component_posterior": post["true_component_posterior"][1:],
            "prior_entropy_nats": post["entropy_nats"][0],
            "entropy_rate_nats": float(sum(w * r for w, (r, _) in zip(proc.weights, rates))),
            "entropy_rate_exact": all(exact for _, exact in rates)}
