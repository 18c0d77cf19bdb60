"""Hidden Markov processes: definition, validation, catalogue, JSON specs, sampling.

A process is a set of labeled transition matrices

    T[x, i, j] = P(emit symbol x, move to state j | in state i)        shape (V, S, S)

V vocabulary size, S hidden states. M = sum_x T[x] is the state-to-state Markov matrix; every row of M must
sum to 1. The process starts from the stationary distribution pi (pi @ M = pi), which must be unique, except
for a mixture (tinyseq/mixture.py), which states its own stationary start.

Everywhere tinyseq accepts a process it accepts a catalogue name with optional parameters
("mess3", "mess3:x=0.15,a=0.6"), a path to a JSON file {"name": ..., "symbols": [...], "T": [[[...]]]}, or
the same JSON inline; a JSON mixture is {"mixture": [[component, weight], ...]} (tinyseq/mixture.py), and
products of independent processes ("mess3*z1r", {"product": [...]}) live in tinyseq/product.py. A path-star
task ("pathstar:d=2,l=5,n=20") is not a hidden Markov process: parse_process hands it to tinyseq/pathstar.py.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from tinyseq import pathstar
from tinyseq.errors import TinyseqError
from tinyseq.markov import closed_classes, stationary_distribution

ROW_SUM_TOL = 1e-9


# ----------------------------------------------------------------------------------------------------------
# the process object
@dataclass
class Process:
    """A validated HMM. Build it with `make_process` (validates) or `parse_process` (name or JSON path)."""

    name: str
    T: np.ndarray                    # (V, S, S) float64, T[x, i, j] = P(x, j | i)
    symbols: list[str]               # V printable names
    params: dict = field(default_factory=dict)
    stationary: np.ndarray = None    # (S,) the start: the unique stationary distribution, or a stated stationary
    #                                  one (a mixture's: weights x each component's), filled by make_process

    @property
    def n_states(self) -> int:
        return self.T.shape[1]

    @property
    def vocab(self) -> int:
        return self.T.shape[0]

    @property
    def M(self) -> np.ndarray:       # (S, S) state transition matrix
        return self.T.sum(axis=0)

    @property
    def emission(self) -> np.ndarray:  # (S, V): E[i, x] = P(next symbol x | state i) = T[x, i, :] @ 1
        return self.T.sum(axis=2).T

    @property
    def label(self) -> str:
        """name with its parameters, e.g. mess3:x=0.05,a=0.85 (the spec that rebuilds it from the catalogue)."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in self.params.items())

    def to_spec(self) -> dict:
        """JSON-able dict that `process_from_dict` turns back into this process (stored in checkpoints)."""
        return {"name": self.label, "symbols": list(self.symbols), "T": self.T.tolist()}

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """(batch, length) int64 tokens, each sequence started from the stationary distribution."""
        return sample(self, batch, length, rng)

    def __repr__(self) -> str:
        return f"Process({self.label}, states={self.n_states}, vocab={self.vocab})"


# ----------------------------------------------------------------------------------------------------------
# validation
def make_process(T, name="custom", symbols=None, params=None, init=None) -> Process:
    """Validate T (V, S, S) and build a Process; every problem is a one-line TinyseqError naming the entry.

    The process starts from its unique stationary distribution (one closed class of states required), or from
    `init` (S,) when given: a stated stationary start for a process with several closed classes (a mixture)."""
    where = f"process '{name}'"
    try:
        T = np.array(T, dtype=np.float64)
    except (ValueError, TypeError) as e:
        msg = str(e).split("\n")[0]
        if "inhomogeneous" in msg or "sequence" in msg:
            raise TinyseqError(f"{where}: T is ragged (rows of different lengths); "
                               "T must be a V x S x S nested list of numbers") from None
        raise TinyseqError(f"{where}: T must contain only numbers ({msg})") from None
    if T.ndim != 3:
        raise TinyseqError(f"{where}: T must have 3 axes (V symbols, S states, S states), got shape {T.shape}")
    V, S, S2 = T.shape
    if V < 1 or S < 1:
        raise TinyseqError(f"{where}: T has an empty axis (shape {T.shape}); need at least 1 symbol and 1 state")
    if S != S2:
        raise TinyseqError(f"{where}: T[x] must be square (S x S), got shape {T.shape}")
    bad = np.argwhere(~np.isfinite(T))
    if len(bad):
        x, i, j = bad[0]
        raise TinyseqError(f"{where}: T[{x}][{i}][{j}] is {T[x, i, j]}; every entry must be a finite probability")
    bad = np.argwhere(T < 0)
    if len(bad):
        x, i, j = bad[0]
        raise TinyseqError(f"{where}: T[{x}][{i}][{j}] = {T[x, i, j]:g} is negative; probabilities must be >= 0")
    rows = T.sum(axis=(0, 2))  # (S,) row sums of M
    for i in range(S):
        if abs(rows[i] - 1.0) > ROW_SUM_TOL:
            raise TinyseqError(f"{where}: row {i} of sum_x T[x] sums to {rows[i]:.12g}, not 1 "
                               f"(P(emit x, go to j | state {i}) over all x, j must total 1, tolerance {ROW_SUM_TOL:g})")
    if symbols is None:
        symbols = [str(x) for x in range(V)]
    if not isinstance(symbols, (list, tuple)) or len(symbols) != V:
        raise TinyseqError(f"{where}: 'symbols' must be a list of {V} names (one per symbol), got {symbols!r}")
    symbols = [str(s) for s in symbols]
    if len(set(symbols)) != V:
        raise TinyseqError(f"{where}: symbol names must be distinct, got {symbols}")
    M = T.sum(axis=0)
    pi = unique_stationary(M, where) if init is None else stated_start(M, init, where)
    return Process(name=name, T=T, symbols=symbols, params=dict(params or {}), stationary=pi)


def unique_stationary(M, where) -> np.ndarray:  # (S, S) -> (S,)
    """The stationary distribution of M, which must be unique: exactly one closed class of states."""
    classes = closed_classes(M)
    if len(classes) != 1:
        desc = "; ".join("{" + ",".join(map(str, c)) + "}" for c in classes)
        raise TinyseqError(f"{where}: not ergodic: {len(classes)} closed classes of states ({desc}), so the "
                           "stationary distribution is not unique; connect the classes so every state can reach one class")
    # the stationary law lives on the closed class; transient states get exactly 0
    pi = np.zeros(M.shape[0])
    cls = classes[0]
    pi[cls] = stationary_distribution(M[np.ix_(cls, cls)])
    return pi


def stated_start(M, init, where) -> np.ndarray:  # (S, S), (S,) -> (S,)
    """A stated initial distribution (a mixture's): a probability vector that M leaves unchanged, so every
    position is drawn from the same law (the process is stationary) even with several closed classes."""
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (M.shape[0],) or not np.all(np.isfinite(init)) or np.any(init < 0):
        raise TinyseqError(f"{where}: the initial distribution must be {M.shape[0]} finite numbers >= 0")
    if abs(init.sum() - 1.0) > ROW_SUM_TOL:
        raise TinyseqError(f"{where}: the initial distribution sums to {init.sum():.12g}, not 1")
    drift = np.abs(init @ M - init).max()
    if drift > ROW_SUM_TOL:
        raise TinyseqError(f"{where}: the initial distribution is not stationary (init @ M differs from it by "
                           f"{drift:.3g}); give each closed class its stationary law")
    return init


# ----------------------------------------------------------------------------------------------------------
# the catalogue (definitions from shared/reference/ANCHORS.md)
def _prob(name, value, lo=0.0, hi=1.0):
    if not (lo <= value <= hi) or math.isnan(value):
        raise TinyseqError(f"parameter {name}={value:g} must lie in [{lo:g}, {hi:g}]")


def mess3(x: float = 0.05, a: float = 0.85) -> np.ndarray:
    """3 states, 3 symbols: T[k][i][j] = P(j | i) P(k | j); P(j|i) = 1-2x if i == j else x;
    P(k|j) = a if k == j else (1-a)/2. Infinite (fractal) mixed-state presentation."""
    _prob("x", x, 0.0, 0.5)
    _prob("a", a)
    P = np.full((3, 3), x)
    np.fill_diagonal(P, 1 - 2 * x)
    Q = np.full((3, 3), (1 - a) / 2)  # Q[j, k] = P(emit k | arrived in j)
    np.fill_diagonal(Q, a)
    return np.einsum("ij,jk->kij", P, Q)


def rrxor(p1: float = 0.5, p2: float = 0.5) -> np.ndarray:
    """Random-random-XOR: two random bits, then their XOR. States S, 0, 1, T, F (in that order)."""
    _prob("p1", p1)
    _prob("p2", p2)
    S_, Z, O, T_, F = range(5)
    T = np.zeros((2, 5, 5))
    T[0, S_, Z], T[1, S_, O] = p1, 1 - p1
    T[0, Z, F], T[1, Z, T_] = p2, 1 - p2
    T[0, O, T_], T[1, O, F] = p2, 1 - p2
    T[1, T_, S_] = 1.0
    T[0, F, S_] = 1.0
    return T


def z1r(p: float = 0.5) -> np.ndarray:
    """Zero, one, random: emit 0, emit 1, emit a random bit. States 0, 1, R."""
    _prob("p", p)
    T = np.zeros((2, 3, 3))
    T[0, 0, 1] = 1.0
    T[1, 1, 2] = 1.0
    T[0, 2, 0], T[1, 2, 0] = p, 1 - p
    return T


def even(p: float = 0.5) -> np.ndarray:
    """Even process: ones come in blocks of even length."""
    _prob("p", p)
    T = np.zeros((2, 2, 2))
    T[0, 0, 0], T[1, 0, 1] = p, 1 - p
    T[1, 1, 0] = 1.0
    return T


def golden_mean(p: float = 0.5) -> np.ndarray:
    """Golden mean process: no two 1s in a row."""
    _prob("p", p)
    T = np.zeros((2, 2, 2))
    T[0, 0, 0], T[1, 0, 1] = p, 1 - p
    T[0, 1, 0] = 1.0
    return T


def nond() -> np.ndarray:
    """A non-unifilar 3-state process with a countably infinite mixed-state presentation."""
    T = np.zeros((2, 3, 3))
    T[0, 0, 2] = 1.0
    T[1, 1, 0], T[1, 1, 1] = 0.5, 0.5
    T[1, 2, :] = 1.0 / 3.0
    return T


CATALOGUE = {
    "mess3": (mess3, "3 states, the paper's fractal belief simplex"),
    "rrxor": (rrxor, "random, random, XOR: belief info only in joint futures"),
    "z1r": (z1r, "zero, one, random: k-step marginals need more than next-token"),
    "even": (even, "ones come in even blocks"),
    "golden_mean": (golden_mean, "no two 1s in a row"),
    "nond": (nond, "non-unifilar, countably infinite MSP"),
}


def _defaults(fn) -> dict:
    import inspect
    return {k: v.default for k, v in inspect.signature(fn).parameters.items()}


def catalogue_process(name: str, **params) -> Process:
    """A catalogue process by name with keyword parameters (defaults from ANCHORS.md)."""
    if name not in CATALOGUE:
        raise TinyseqError(f"unknown process '{name}'; choose one of {', '.join(CATALOGUE)} or give a path to a .json file")
    fn = CATALOGUE[name][0]
    defaults = _defaults(fn)
    for k in params:
        if k not in defaults:
            accepted = ", ".join(defaults) if defaults else "none"
            raise TinyseqError(f"process '{name}' has no parameter '{k}' (accepted: {accepted})")
    full = {**defaults, **params}
    try:
        T = fn(**full)
    except TinyseqError as e:
        raise TinyseqError(f"process '{name}': {e}") from None
    return make_process(T, name=name, params=full)


# ----------------------------------------------------------------------------------------------------------
# parsing: "name:k=v,k=v" or a JSON path
def parse_process(spec) -> Process:
    """Process from a catalogue spec ("mess3", "mess3:x=0.15,a=0.6"), a JSON path, a dict, or a Process."""
    if isinstance(spec, (Process, pathstar.PathStar)):
        return spec
    if isinstance(spec, dict):
        return process_from_dict(spec, where="process spec")
    if not isinstance(spec, (str, os.PathLike)):
        raise TinyseqError(f"a process is a name like 'mess3' or a path to a .json file, got {type(spec).__name__}")
    spec = os.fspath(spec).strip()
    if not spec:
        raise TinyseqError("empty process spec; give a name like 'mess3' or a path to a .json file")
    if spec.startswith("{"):                                   # inline JSON, e.g. '{"mixture": [...]}'
        return process_from_dict(_json_object(spec, "inline process spec"), where="inline process spec")
    if "*" in spec:                          # a product, mess3*z1r:p=0.5 (tinyseq/product.py)
        from tinyseq.product import parse_product
        return parse_product(spec)
    if spec.lower().endswith(".json") or os.sep in spec or os.path.exists(spec):
        return load_process_json(spec)
    if spec.partition(":")[0].strip().lower() == "pathstar":      # a task, not a hidden Markov process
        return pathstar.parse_spec(spec)
    name, _, rest = spec.partition(":")
    name = name.strip()
    params = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, val = item.partition("=")
            key, val = key.strip(), val.strip()
            if not eq or not key or not val:
                raise TinyseqError(f"malformed process parameter '{item.strip()}' in '{spec}'; "
                                   "write name:key=value,key=value (e.g. mess3:x=0.15,a=0.6)")
            if key in params:
                raise TinyseqError(f"process parameter {key} is given twice in '{spec}'; give each parameter once")
            try:
                params[key] = float(val)
            except ValueError:
                raise TinyseqError(f"process parameter {key}='{val}' is not a number (in '{spec}')") from None
            if not math.isfinite(params[key]):
                raise TinyseqError(f"process parameter {key}={val} must be a finite number (in '{spec}')")
    elif _ != "" and not rest.strip():
        raise TinyseqError(f"'{spec}' has ':' but no parameters; write name:key=value (e.g. mess3:x=0.15)")
    return catalogue_process(name, **params)


def process_from_dict(d, where="process") -> Process:
    if not isinstance(d, dict):
        raise TinyseqError(f"{where}: must be a JSON object with keys name, symbols, T; got {type(d).__name__}")
    if "mixture" in d:                                         # {"mixture": [[component, weight], ...]}
        from tinyseq.mixture import mixture_from_dict
        return mixture_from_dict(d, where)
    if d.get("task") == "pathstar":
        return pathstar.from_dict(d, where)
    if "product" in d:                       # {"product": [factor, ...]} (tinyseq/product.py)
        from tinyseq.product import product_from_dict
        return product_from_dict(d, where)
    if "T" not in d:
        raise TinyseqError(f"{where}: missing key 'T' (the V x S x S labeled transition matrices)")
    unknown = set(d) - {"name", "symbols", "T", "params"}
    if unknown:
        raise TinyseqError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, symbols, T")
    name = d.get("name", "custom")
    if not isinstance(name, str) or not name:
        raise TinyseqError(f"{where}: 'name' must be a non-empty string")
    T = d["T"]
    if not isinstance(T, list):
        raise TinyseqError(f"{where}: 'T' must be a nested list V x S x S, got {type(T).__name__}")
    _check_nested(T, where)
    return make_process(T, name=name, symbols=d.get("symbols"), params=None)


def _check_nested(T, where):
    """Walk the nested list so a ragged or non-numeric entry is reported by its index."""
    if not T:
        raise TinyseqError(f"{where}: 'T' is empty; need V >= 1 matrices of S x S")
    if not all(isinstance(m, list) for m in T):
        raise TinyseqError(f"{where}: 'T' must be a list of V matrices (lists of rows)")
    S = len(T[0])
    for x, m in enumerate(T):
        if len(m) != S:
            raise TinyseqError(f"{where}: T[{x}] has {len(m)} rows but T[0] has {S}; T is ragged")
        for i, row in enumerate(m):
            if not isinstance(row, list):
                raise TinyseqError(f"{where}: T[{x}][{i}] must be a list of {S} numbers")
            if len(row) != S:
                raise TinyseqError(f"{where}: T[{x}][{i}] has {len(row)} entries, expected {S} (S x S matrices)")
            for j, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TinyseqError(f"{where}: T[{x}][{i}][{j}] = {v!r} is not a number")


def load_process_json(path: str) -> Process:
    where = f"process file '{path}'"
    if not os.path.exists(path):
        raise TinyseqError(f"{where} does not exist; give a catalogue name ({', '.join(CATALOGUE)}) or an existing .json path")
    if os.path.isdir(path):
        raise TinyseqError(f"{where} is a directory; give the path of a .json file")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TinyseqError(f"{where} cannot be read ({e.__class__.__name__}: {e})") from None
    return process_from_dict(_json_object(text, where), where=where)


def _json_object(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TinyseqError(f"{where} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


# ----------------------------------------------------------------------------------------------------------
# sampling: one uniform per token picks (symbol, next state) jointly from the row of the current state
def _joint_cdf(proc: Process) -> np.ndarray:
    """(S, V*S) cumulative P(x, j | i) over the flattened (x, j) index x*S + j."""
    V, S, _ = proc.T.shape
    joint = proc.T.transpose(1, 0, 2).reshape(S, V * S)  # (S, V*S)
    cdf = np.cumsum(joint, axis=1)
    cdf[:, -1] = 1.0  # guard against rounding: the last bin always catches u < 1
    return cdf


def sample_reference(cdf, pi_cdf, u0, u, S):  # (S, V*S), (S,), (B,), (B, T), S -> (B, T) int64
    """Plain NumPy sampler (the reference): vectorised over the batch, a loop over time."""
    B, T = u.shape
    state = np.searchsorted(pi_cdf, u0, side="right")          # (B,) initial hidden states
    state = np.minimum(state, S - 1)
    out = np.empty((B, T), dtype=np.int64)
    for t in range(T):
        # index of the first cdf entry > u: the sampled (x, j) pair
        k = (u[:, t:t + 1] >= cdf[state]).sum(axis=1)           # (B,)
        out[:, t] = k // S
        state = k % S
    return out


@njit(cache=True)
def sample_kernel(cdf, pi_cdf, u0, u, S):  # Numba twin of sample_reference, same inputs -> same tokens
    B, T = u.shape
    W = cdf.shape[1]
    out = np.empty((B, T), dtype=np.int64)
    for b in range(B):
        s = 0
        while s < S - 1 and u0[b] >= pi_cdf[s]:
            s += 1
        for t in range(T):
            k = 0
            while k < W - 1 and u[b, t] >= cdf[s, k]:
                k += 1
            out[b, t] = k // S
            s = k % S
    return out


def sample(proc: Process, batch: int, length: int, rng: np.random.Generator, backend: str = "numba") -> np.ndarray:
    """(batch, length) tokens from the stationary start. Same rng state -> same tokens on either backend."""
    S = proc.n_states
    pi_cdf = np.cumsum(proc.stationary)
    pi_cdf[-1] = 1.0
    cdf = _joint_cdf(proc)
    u0 = rng.random(batch)
    u = rng.random((batch, length))
    if backend == "numpy":
        return sample_reference(cdf, pi_cdf, u0, u, S)
    return sample_kernel(cdf, pi_cdf, u0, u, S)


# ----------------------------------------------------------------------------------------------------------
def catalogue_names() -> list[str]:
    return list(CATALOGUE)
