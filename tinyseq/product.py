"""Products of independent processes: the factors run side by side, each with its own hidden state.

A product of factors P_1 .. P_n (V_i symbols, S_i states) is again an HMM: its hidden state is the tuple of the
factors' states and its symbol the tuple of their symbols,

    T[(x_1..x_n), (i_1..i_n), (j_1..j_n)] = T_1[x_1, i_1, j_1] * ... * T_n[x_n, i_n, j_n]     shape (V, S, S)

with V = prod V_i and S = prod S_i. Tuples are flattened row-major (the first factor varies slowest: the
index of (x_1, x_2) is x_1 * V_2 + x_2, as in np.kron), and a joint symbol is named by its factors' names
joined with '.', e.g. '1.0'. The joint T is small enough to build and sample from (mess3 x mess3: 9 x 9 x 9),
but its mixed-state presentation is not (mess3 alone reaches 3^10 beliefs at depth 10, the pair 3^20): every
exact fact comes from the factors instead, because independent factors stay independent given the past:

    belief        eta_t = eta_t^(1) (x) ... (x) eta_t^(n)          (outer product of the factors' beliefs)
    h(L), h_mu    sums of the factors' (entropy of independent variables adds)
    C_mu          sum of the factors' (when every factor's MSP is finite)
    k-step Bayes  product of the factors' E[max_x P*(x)] (the max of a product of independent marginals)

Specs: JSON {"product": [factor, factor, ...]} where each factor is a catalogue spec string ("mess3",
"z1r:p=0.5"), a path to a plain process .json, or a plain process object {"name", "symbols", "T"}; on the
command line factors joined by '*': mess3*mess3:x=0.15,a=0.6. Products of products are refused (list every
factor in one product instead), and so are mixtures as factors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.processes import Process, parse_process, process_from_dict

# beliefs.py imports this module for its product dispatch, so the functions below import beliefs when called

PRODUCT_SEP = "*"            # the command-line form: factors joined by '*'
SYMBOL_SEP = "."             # a joint symbol's name: the factors' symbol names joined by '.'
MAX_JOINT_ENTRIES = 4_000_000  # V * S * S of the joint T we agree to build (32 MB of float64)


@dataclass(repr=False)
class Product(Process):
    """A Process whose T is the joint of independent factors; `factors` keeps them for the exact facts."""

    factors: list = field(default_factory=list)    # the factor Processes, in order

    @property
    def label(self) -> str:
        """The command-line spec that rebuilds it: the factors' labels joined by '*'."""
        return PRODUCT_SEP.join(f.label for f in self.factors)

    def to_spec(self) -> dict:
        """The JSON form, each factor stored whole (its T), so a checkpoint reloads the same product."""
        return {"product": [f.to_spec() for f in self.factors]}


def is_product(proc) -> bool:
    return isinstance(proc, Product)


# ----------------------------------------------------------------------------------------------------------
# building a product
def joint_T(factors) -> np.ndarray:  # [(V_i, S_i, S_i)] -> (prod V_i, prod S_i, prod S_i)
    """T[(x1, x2), (i1, i2), (j1, j2)] = T1[x1, i1, j1] * T2[x2, i2, j2], folded one factor at a time."""
    T = factors[0].T
    for f in factors[1:]:
        V, S = T.shape[0] * f.vocab, T.shape[1] * f.n_states
        T = np.einsum("aij,bkl->abikjl", T, f.T).reshape(V, S, S)
    return T


def make_product(factors) -> Product:
    """The product of validated plain processes (at least two)."""
    if len(factors) < 2:
        raise TinyseqError(f"a product needs at least 2 factors, got {len(factors)}; give a single process "
                           "directly (e.g. mess3), not as a product")
    V, S = math.prod(f.vocab for f in factors), math.prod(f.n_states for f in factors)
    if V * S * S > MAX_JOINT_ENTRIES:
        raise TinyseqError(f"the product {PRODUCT_SEP.join(f.label for f in factors)} has {V} symbols and {S} "
                           f"states: its joint T ({V * S * S:,} entries) is too large (limit {MAX_JOINT_ENTRIES:,})")
    symbols = [""]
    for f in factors:
        symbols = [s + (SYMBOL_SEP if s else "") + x for s in symbols for x in f.symbols]
    if len(set(symbols)) != V:
        raise TinyseqError(f"the product's symbol names are not distinct ({SYMBOL_SEP!r} inside a factor's symbol "
                           f"names makes them ambiguous): rename the factors' symbols")
    # the joint stationary law is the product of the factors' (the joint chain can have several closed
    # classes when factors share a period, e.g. z1r*z1r, but the independent start is this one)
    pi = factors[0].stationary
    for f in factors[1:]:
        pi = np.kron(pi, f.stationary)
    name = "product-" + "-".join(f.name.split(":")[0] for f in factors)
    return Product(name=name, T=joint_T(factors), symbols=symbols, stationary=pi, factors=list(factors))


def _factor(item, where) -> Process:
    """One factor of a product spec: a catalogue spec / .json path string, or a plain process object."""
    if isinstance(item, dict) and ("product" in item or "mixture" in item):
        kind = "product" if "product" in item else "mixture"
        raise TinyseqError(f"{where}: a {kind} inside a product is not supported; list every factor in one product")
    if isinstance(item, str) and PRODUCT_SEP in item:
        raise TinyseqError(f"{where}: factor '{item}' is itself a product; list every factor in one product")
    if isinstance(item, dict):
        proc = process_from_dict(item, where=where)
    elif isinstance(item, str):
        proc = parse_process(item)
    else:
        raise TinyseqError(f"{where}: each factor is a process name like 'mess3', a .json path or a process "
                           f"object, got {type(item).__name__}")
    if type(proc) is not Process:
        raise TinyseqError(f"{where}: factor {proc.label} is not a plain process; nested products and mixtures "
                           "are not supported")
    return proc


def product_from_list(items, where="product") -> Product:
    """{"product": items} -> Product; every problem is one line naming the factor."""
    if not isinstance(items, list):
        raise TinyseqError(f"{where}: 'product' must be a list of factors, got {type(items).__name__}")
    if not items:
        raise TinyseqError(f"{where}: 'product' is an empty list; give at least 2 factors, e.g. "
                           '{"product": ["mess3", "z1r:p=0.5"]}')
    return make_product([_factor(item, f"{where}, factor {n + 1}") for n, item in enumerate(items)])


def product_from_dict(d, where="process") -> Product:
    unknown = set(d) - {"product"}
    if unknown:
        raise TinyseqError(f"{where}: unknown keys {sorted(unknown)} next to 'product'; a product has only "
                           "'product': [factor, ...]")
    return product_from_list(d["product"], where)


def parse_product(spec: str) -> Product:
    """The command-line form 'mess3*z1r:p=0.5' (factors joined by '*')."""
    parts = [p.strip() for p in spec.split(PRODUCT_SEP)]
    if any(not p for p in parts):
        raise TinyseqError(f"'{spec}' has an empty factor; write factors joined by '{PRODUCT_SEP}', e.g. "
                           "mess3*mess3:x=0.15,a=0.6")
    return product_from_list(parts, where=f"product '{spec}'")


# ----------------------------------------------------------------------------------------------------------
# exact beliefs along sequences, from the factors
def factor_tokens(proc: Product, tokens) -> list[np.ndarray]:  # (B, T) joint tokens -> [(B, T) per factor]
    """x = sum_i x_i * stride_i with stride_i = V_(i+1) * ... * V_n (the first factor varies slowest)."""
    tokens = np.asarray(tokens)
    out, stride = [], proc.vocab
    for f in proc.factors:
        stride //= f.vocab
        out.append((tokens // stride) % f.vocab)
    return out


def factor_beliefs(proc: Product, tokens) -> list[np.ndarray]:  # (B, T) -> [(B, T, S_i) per factor]
    """Each factor's exact belief after every prefix, from its own tokens."""
    from tinyseq.beliefs import _check_process_tokens, belief_states
    tokens = _check_process_tokens(proc, tokens)
    return [belief_states(f, x) for f, x in zip(proc.factors, factor_tokens(proc, tokens))]


def outer_beliefs(parts) -> np.ndarray:  # [(..., S_i)] -> (..., prod S_i), row-major like the joint states
    out = parts[0]
    for b in parts[1:]:
        out = (out[..., :, None] * b[..., None, :]).reshape(out.shape[:-1] + (-1,))
    return out


def product_belief_states(proc: Product, tokens) -> np.ndarray:  # (B, T) -> (B, T, S)
    """The joint belief: the outer product of the factors' beliefs (they are independent given the past)."""
    return outer_beliefs(factor_beliefs(proc, tokens))


# ----------------------------------------------------------------------------------------------------------
# exact facts, from the factors
def product_myopic_entropies(proc: Product, depth: int) -> np.ndarray:  # -> (depth,) h(1..depth), nats
    """h(L) of independent factors adds: H(X_L | past) = sum_i H(X_L^(i) | past^(i))."""
    from tinyseq.beliefs import myopic_entropies
    return np.sum([myopic_entropies(f, depth) for f in proc.factors], axis=0)


def product_facts(proc: Product, depth, horizon, context, rank_horizon) -> dict:
    """beliefs.process_facts for a product: each factor's facts, and the joint's combined from them. depth and
    context None: each factor's default; if one factor's must come down, every factor's facts use that depth."""
    from tinyseq.beliefs import (BELIEF_TOL, kstep_marginal_accuracy, observability_ranks, process_facts)
    parts = [process_facts(f, depth, horizon, context, rank_horizon) for f in proc.factors]
    note = next((f"{f.label}: {p['depth_note']}" for f, p in zip(proc.factors, parts) if p["depth_note"]), None)
    depth, context = min(p["depth"] for p in parts), min(p["context"] for p in parts)
    parts = [p if (p["depth"], p["context"]) == (depth, context)              # the same depth for all: only
             else process_facts(f, depth, horizon, context, rank_horizon)     # the factors still deeper again
             for f, p in zip(proc.factors, parts)]
    h = np.sum([p["myopic_entropy_nats"] for p in parts], axis=0)
    rate = sum(p["entropy_rate_nats"] for p in parts)
    cmus = [p["statistical_complexity_nats"] for p in parts]
    ln2 = math.log(2)
    return {
        "name": proc.label, "states": proc.n_states, "vocab": proc.vocab, "symbols": list(proc.symbols),
        "stationary": proc.stationary.tolist(), "depth": depth,
        "myopic_entropy_nats": h.tolist(), "myopic_entropy_bits": (h / ln2).tolist(),
        "block_entropy_nats": np.cumsum(h).tolist(),
        "entropy_rate_nats": rate, "entropy_rate_bits": rate / ln2,
        "entropy_rate_exact": all(p["entropy_rate_exact"] for p in parts),
        "excess_entropy_nats_estimate": sum(p["excess_entropy_nats_estimate"] for p in parts),
        "msp_states": None,                      # distinct joint beliefs: not enumerated (see the factors')
        "msp_finite": all(p["msp_finite"] for p in parts),
        "statistical_complexity_nats": None if None in cmus else sum(cmus),
        "context": context, "horizon": horizon,
        "kstep_bayes_accuracy": np.prod([p["kstep_bayes_accuracy"] for p in parts], axis=0).tolist(),
        "kstep_marginal_accuracy": kstep_marginal_accuracy(proc, horizon).tolist(),
        "ranks": observability_ranks(proc, rank_horizon),    # linear algebra on the joint T: no enumeration
        "belief_tolerance": BELIEF_TOL,
        "factors": parts, "depth_note": note,
        "factor_dimensions": {"sum": sum(f.n_states - 1 for f in proc.factors), "joint": proc.n_states - 1},
    }
