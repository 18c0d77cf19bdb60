"""The path-star task: where teacher-forced next-token training learns a shortcut instead of a plan.

Bachmann & Nagarajan (ICML 2024, "The pitfalls of next-token prediction"). A path-star graph has a centre
node with d arms; each arm is a chain of l - 1 nodes, so a path from the centre to a leaf has l nodes
(centre included). Every sequence draws a fresh graph: its d(l-1) + 1 nodes get distinct labels, a random
subset of 0..n-1 in random order. The prompt lists the edges in random order, then the start (the centre)
and the goal (a leaf chosen uniformly); the target is the path from start to goal.

Spec: `pathstar:d=2,l=5,n=20` (every key optional; these are the defaults).

Token layout (V = n + 4 token values):

    0 .. n-1   node labels
    n          ","   ends an edge
    n + 1      "|"   ends the edge list: the query follows
    n + 2      "="   ends the prompt: the path follows
    n + 3      "$"   the teacherless dummy, fed in place of the path tokens (never a target)

One sequence, E = d(l-1) edges, each written parent-first (centre outward), then the query and the path:

    u_1 v_1 , u_2 v_2 , ... u_E v_E , | start goal = p_1 p_2 ... p_l
    |<------------------- prompt: P = 3E + 4 tokens ---------------->|<- l ->|

For d=2, l=5, n=20: E = 8, P = 28, 33 tokens in all; a model reads the first 32 (n_ctx = P + l - 1 = 32)
and predicts the last 32 (inputs = sequence[:-1], targets = sequence[1:], as next-token training always does).
The loss mask is 1 exactly on the l targets that are path tokens (input positions P-1 .. P+l-2) and 0
elsewhere: the prompt is given, not learned.

Objectives (what differs is only the path part of the sequence and of the inputs):

    ntp          path written start -> goal, inputs teacher-forced (the true previous path token)
    reverse      path written goal -> start: every step after the first is a parent lookup (unique)
    teacherless  path start -> goal; the inputs at path positions are "$", so every path token must be
                 predicted from the prompt alone (Bachmann & Nagarajan's dummy-token construction)

Path positions are numbered 1..l. With ntp, position 1 is the start (a copy from the prompt), position 2 is
the planning step (d children of the centre, only one leads to the goal), positions 3..l are lookups of the
one child of the true previous node (position l, the goal, is also a copy).

Sampling order, so that evaluation graphs can be regenerated from (spec, seed) alone: for a batch of B
sequences from `rng = np.random.default_rng(seed)`:
    1. labels:     rng.random((B, n)).argsort(axis=1)[:, :d(l-1)+1]  (label of canonical node 0, 1, ...)
    2. edge order: rng.random((B, E)).argsort(axis=1)                (which canonical edge is written i-th)
    3. goal arm:   rng.integers(0, d, size=B)
Canonical nodes: 0 is the centre; 1 + a(l-1) + (k-1) is the node at depth k = 1..l-1 of arm a = 0..d-1.
Canonical edge e = a(l-1) + (k-1) joins the node at depth k-1 of arm a (the centre when k = 1) to the one
at depth k, so its child is node 1 + e and its parent is node e, or 0 when e is a multiple of l - 1.

Contents, in pipeline order:
    parse_spec / PathStar                     the spec, its layout, vocabulary and context length
    sample_graphs / encode / training_arrays / sample_batch
                                              fresh graphs -> sequences -> (inputs, targets, mask)
    chance_levels                             per-position accuracy of a predictor that cannot plan
    generate / teacher_forced / path_accuracy greedy decoding and teacher-forced accuracy per position
    plan_targets / plan_candidates / prefix_features / plan_probe
                                              is the plan in the state before the first path token?
    MODEL / TRAIN                             the model and settings `train` starts from on path-star
    path_batch / PathStarTask                 train()'s task interface: a batch with its loss weights per head,
                                              the held-out graphs, the evaluation (tinyseq/train.py trains)
    analyse_paths                             what `tinyseq probe` measures on a path-star checkpoint

Shape letters: B sequences, L sequence length (P + l), T model positions (L - 1), V vocabulary,
NN nodes per graph (d(l-1) + 1), E edges, C feature width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.objectives import Batch

OBJECTIVES = ("ntp", "reverse", "teacherless")
DEFAULTS = {"d": 2, "l": 5, "n": 20}
MAX_LABELS = 10_000           # n: each batch draws B x n random numbers to pick the labels
MAX_SEQ_LEN = 4096            # L = 3d(l-1) + 4 + l tokens: beyond this no tinyseq model trains in minutes
SPEC_HINT = "e.g. pathstar:d=2,l=5,n=20 (d arms >= 2, l path nodes >= 2, n labels >= d(l-1)+1)"


# ----------------------------------------------------------------------------------------------------------
# the spec and the token layout
@dataclass(frozen=True)
class PathStar:
    """A path-star task: d arms, paths of l nodes (centre included), n node labels."""
    d: int = 2                    # arms (the centre's degree)
    l: int = 5                    # nodes on a path from the centre to a leaf, both included
    n: int = 20                   # node labels; each graph uses d(l-1)+1 distinct ones

    @property
    def n_nodes(self) -> int:     # NN
        return self.d * (self.l - 1) + 1

    @property
    def n_edges(self) -> int:     # E
        return self.d * (self.l - 1)

    # the separator tokens follow the node labels
    @property
    def comma(self) -> int:
        return self.n

    @property
    def query(self) -> int:
        return self.n + 1

    @property
    def equals(self) -> int:
        return self.n + 2

    @property
    def dummy(self) -> int:
        return self.n + 3

    @property
    def vocab(self) -> int:       # V
        return self.n + 4

    @property
    def prompt_len(self) -> int:  # P: the edges (3 tokens each), "|", start, goal, "="
        return 3 * self.n_edges + 4

    @property
    def seq_len(self) -> int:     # L
        return self.prompt_len + self.l

    @property
    def n_ctx(self) -> int:       # T: the model reads every token but the last
        return self.seq_len - 1

    @property
    def label(self) -> str:
        return f"pathstar:d={self.d},l={self.l},n={self.n}"

    @property
    def name(self) -> str:        # the kind of task, as a process's name (run folders are named by it)
        return "pathstar"

    def to_spec(self) -> dict:    # what a checkpoint stores; from_dict reads it back
        return {"task": "pathstar", "d": self.d, "l": self.l, "n": self.n}


def from_dict(d: dict, where: str = "task") -> PathStar:
    """{"task": "pathstar", "d": 2, "l": 5, "n": 20} (as PathStar.to_spec writes it) -> PathStar."""
    unknown = sorted(set(d) - {"task", *DEFAULTS})
    if unknown:
        raise TinyseqError(f"{where}: unknown keys {unknown} for a path-star task; allowed: task, d, l, n")
    values = {k: d.get(k, v) for k, v in DEFAULTS.items()}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TinyseqError(f"{where}: path-star {key} must be a whole number, got {value!r}")
    return check_spec(PathStar(**values))


def _spec_int(key: str, value: str, text: str) -> int:
    v = value.strip()
    if not (v.isdigit() or (v.startswith("-") and v[1:].isdigit())):
        raise TinyseqError(f"path-star spec {text!r}: {key} must be a whole number, got {v!r}; {SPEC_HINT}")
    return int(v)


def parse_spec(text) -> PathStar:
    """'pathstar' or 'pathstar:d=2,l=5,n=20' (any subset of the keys) -> PathStar; one-line TinyseqError."""
    if not isinstance(text, str):
        raise TinyseqError(f"a path-star spec must be a string, got {text!r}; {SPEC_HINT}")
    name, _, params = text.strip().partition(":")
    if name.strip().lower() != "pathstar":
        raise TinyseqError(f"not a path-star spec: {text!r}; {SPEC_HINT}")
    values = dict(DEFAULTS)
    seen = set()
    for part in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in DEFAULTS:
            raise TinyseqError(f"path-star spec {text!r}: unknown setting {part!r}; {SPEC_HINT}")
        if key in seen:
            raise TinyseqError(f"path-star spec {text!r}: {key} is given twice; {SPEC_HINT}")
        seen.add(key)
        values[key] = _spec_int(key, value, text)
    return check_spec(PathStar(**values))


def check_spec(spec: PathStar) -> PathStar:
    """d >= 2, l >= 2, n >= d(l-1)+1 (every node needs its own label), and sizes a laptop can sample;
    one-line TinyseqError otherwise."""
    d, l, n = spec.d, spec.l, spec.n
    if d < 2:
        raise TinyseqError(f"path-star d={d}: a star needs d >= 2 arms, or there is nothing to plan")
    if l < 2:
        raise TinyseqError(f"path-star l={l}: a path needs l >= 2 nodes (the centre and at least one more)")
    if n < spec.n_nodes:
        raise TinyseqError(f"path-star n={n}: a graph with d={d} arms of l-1={l - 1} nodes has d(l-1)+1="
                           f"{spec.n_nodes} nodes, each needs its own label: use n >= {spec.n_nodes}")
    if n > MAX_LABELS:
        raise TinyseqError(f"path-star n={n}: at most {MAX_LABELS} node labels")
    if spec.seq_len > MAX_SEQ_LEN:
        raise TinyseqError(f"path-star d={d}, l={l}: a sequence would be 3d(l-1)+4+l={spec.seq_len} tokens, "
                           f"more than {MAX_SEQ_LEN}: use fewer or shorter arms")
    return spec


def check_objective(objective) -> str:
    if not isinstance(objective, str) or objective.strip().lower() not in OBJECTIVES:
        raise TinyseqError(f"unknown path-star objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    return objective.strip().lower()


# ----------------------------------------------------------------------------------------------------------
# sampling: fresh graphs, written as token sequences
@dataclass
class Graphs:
    """B path-star graphs in canonical form (see the module docstring for the canonical numbering)."""
    labels: np.ndarray        # (B, NN) int: label of canonical node i
    edge_order: np.ndarray    # (B, E) int: the canonical edge written i-th in the prompt
    arm: np.ndarray           # (B,) int: the goal's arm


def sample_graphs(spec: PathStar, rng, batch: int) -> Graphs:
    """B fresh graphs, drawn in the documented order (labels, edge order, goal arm)."""
    labels = rng.random((batch, spec.n)).argsort(axis=1)[:, :spec.n_nodes]     # distinct, uniformly random
    edge_order = rng.random((batch, spec.n_edges)).argsort(axis=1)             # a uniform permutation
    arm = rng.integers(0, spec.d, size=batch)
    return Graphs(labels, edge_order, arm)


def canonical_edges(spec: PathStar):  # -> parent (E,), child (E,) canonical node indices
    e = np.arange(spec.n_edges)
    parent = np.where(e % (spec.l - 1) == 0, 0, e)     # depth 1 hangs off the centre, deeper off node e
    return parent, e + 1


def path_nodes(spec: PathStar, arm):  # (B,) -> (B, l) canonical nodes from the centre to the leaf of `arm`
    depth = np.arange(1, spec.l)                                           # (l-1,)
    arm_nodes = 1 + arm[:, None] * (spec.l - 1) + (depth[None] - 1)        # (B, l-1)
    return np.concatenate([np.zeros((len(arm), 1), dtype=arm_nodes.dtype), arm_nodes], axis=1)


def true_paths(spec: PathStar, graphs: Graphs, objective: str = "ntp"):  # -> (B, l) labels, in target order
    path = np.take_along_axis(graphs.labels, path_nodes(spec, graphs.arm), axis=1)
    return path[:, ::-1] if check_objective(objective) == "reverse" else path


def encode(spec: PathStar, graphs: Graphs, objective: str = "ntp"):  # -> (B, L) int64 token sequences
    """The prompt (edges in the sampled order, "|", start, goal, "=") followed by the path."""
    B, E, P = len(graphs.arm), spec.n_edges, spec.prompt_len
    parent, child = canonical_edges(spec)
    seq = np.empty((B, spec.seq_len), dtype=np.int64)
    seq[:, 0:3 * E:3] = np.take_along_axis(graphs.labels, parent[graphs.edge_order], axis=1)   # u
    seq[:, 1:3 * E:3] = np.take_along_axis(graphs.labels, child[graphs.edge_order], axis=1)    # v
    seq[:, 2:3 * E:3] = spec.comma
    path = true_paths(spec, graphs, "ntp")                                                      # (B, l)
    seq[:, 3 * E] = spec.query
    seq[:, 3 * E + 1] = path[:, 0]                     # start: the centre
    seq[:, 3 * E + 2] = path[:, -1]                    # goal: the leaf
    seq[:, 3 * E + 3] = spec.equals
    seq[:, P:] = true_paths(spec, graphs, objective)
    return seq


def training_arrays(spec: PathStar, seq, objective: str = "ntp"):
    # (B, L) -> inputs (B, T) int64, targets (B, T) int64, mask (B, T) float32
    """Next-token pairs of the sequences with the loss mask on the path targets; teacherless replaces the
    path tokens among the inputs (input positions P..T-1) by the dummy token."""
    P = spec.prompt_len
    inputs = np.array(seq[:, :-1])
    targets = np.ascontiguousarray(seq[:, 1:])
    if check_objective(objective) == "teacherless":
        inputs[:, P:] = spec.dummy
    mask = np.zeros(targets.shape, dtype=np.float32)
    mask[:, P - 1:] = 1.0                              # targets P-1 .. P+l-2 are the l path tokens
    return inputs, targets, mask


def sample_batch(spec: PathStar, rng, batch: int, objective: str = "ntp"):
    """B fresh graphs as (inputs (B, T), targets (B, T), mask (B, T)): the training step's whole input."""
    return training_arrays(spec, encode(spec, sample_graphs(spec, rng, batch), objective), objective)


def eval_set(spec: PathStar, n_graphs: int = 2000, seed: int = 0):  # -> Graphs
    """The evaluation graphs: a function of (spec, n_graphs, seed) only, the same for every objective."""
    return sample_graphs(spec, np.random.default_rng(seed), n_graphs)


# ----------------------------------------------------------------------------------------------------------
# chance: what a predictor that cannot plan gets right
def chance_levels(spec: PathStar, objective: str = "ntp") -> dict:
    """Per-position accuracy (positions 1..l) of a predictor that cannot plan: it copies the first path token
    from the prompt, follows the one edge out of (reverse: into) a node it is fed, and where it must choose
    an arm it picks one uniformly and follows it. {"teacher_forced", "generated": [l floats],
    "exact_match": float}. ntp teacher-forced is the Clever-Hans signature [1, 1/d, 1, ..., 1]; teacherless
    is fed no path node, so both of its rows are the generated one. With l = 2 the path is (start, goal):
    two copies, chance 1."""
    objective = check_objective(objective)
    d, l = spec.d, spec.l
    if objective == "reverse" or l == 2:               # a copy of the goal, then unique parent lookups
        return {"teacher_forced": [1.0] * l, "generated": [1.0] * l, "exact_match": 1.0}
    guess = [1.0] + [1.0 / d] * (l - 1)                # one arm guessed at position 2, then followed
    tf = [1.0, 1.0 / d] + [1.0] * (l - 2) if objective == "ntp" else list(guess)
    return {"teacher_forced": tf, "generated": guess, "exact_match": 1.0 / d}


def task_facts(spec: PathStar) -> dict:
    """What `tinyseq process show pathstar:...` prints: the token layout, sizes, and chance per objective."""
    E, P = spec.n_edges, spec.prompt_len
    layout = (["u_1", "v_1", ","] + (["..."] if E > 2 else []) + (["u_E", "v_E", ","] if E > 1 else [])
              + ["|", "start", "goal", "=", "p_1", "...", f"p_{spec.l}"])
    return {"task": spec.label, "d": spec.d, "l": spec.l, "n": spec.n, "nodes": spec.n_nodes, "edges": E,
            "prompt_tokens": P, "sequence_tokens": spec.seq_len, "n_ctx": spec.n_ctx, "vocab": spec.vocab,
            "tokens": {"labels": f"0..{spec.n - 1}", ",": spec.comma, "|": spec.query, "=": spec.equals,
                       "$": spec.dummy},
            "layout": " ".join(layout), "loss_positions": list(range(P - 1, spec.n_ctx)),
            "chance": {objective: chance_levels(spec, objective) for objective in OBJECTIVES}}


# ----------------------------------------------------------------------------------------------------------
# decoding and accuracy; next_logits(tokens (B, T')) -> (B, T', V) is any model (or stub)
def _chunks(n: int, size: int):
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def generate(next_logits, spec: PathStar, seq, objective: str = "ntp", chunk: int = 512):  # -> (B, l) int
    """Greedy decoding of the path from each prompt. Teacherless feeds the dummies and reads all l
    predictions from one pass (its inputs never depend on its outputs)."""
    objective, P, l = check_objective(objective), spec.prompt_len, spec.l
    out = np.empty((len(seq), l), dtype=np.int64)
    for s in _chunks(len(seq), chunk):
        tokens = np.array(seq[s, :P])                                              # (b, P)
        if objective == "teacherless":
            tokens = np.concatenate([tokens, np.full((len(tokens), l - 1), spec.dummy)], axis=1)
            out[s] = next_logits(tokens)[:, P - 1:].argmax(axis=-1)
            continue
        for j in range(l):
            nxt = next_logits(tokens)[:, -1].argmax(axis=-1)                       # (b,)
            out[s, j] = nxt
            if j < l - 1:
                tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
    return out


def teacher_forced(next_logits, spec: PathStar, seq, objective: str = "ntp", chunk: int = 512):  # -> (B, l)
    """The argmax at each path target when the inputs are the true sequence (teacherless: the dummies)."""
    P, l = spec.prompt_len, spec.l
    inputs, _, _ = training_arrays(spec, seq, objective)
    out = np.empty((len(seq), l), dtype=np.int64)
    for s in _chunks(len(seq), chunk):
        out[s] = next_logits(inputs[s])[:, P - 1:P - 1 + l].argmax(axis=-1)
    return out


def path_accuracy(pred, true) -> dict:  # (B, l), (B, l) -> {"per_position": [l floats], "exact_match": float}
    hit = np.asarray(pred) == np.asarray(true)
    return {"per_position": hit.mean(axis=0).tolist(), "exact_match": float(hit.all(axis=1).mean())}


def evaluate_paths(next_logits, spec: PathStar, graphs: Graphs, objective: str = "ntp") -> dict:
    """Generated and teacher-forced accuracy per path position, exact match, and the chance levels."""
    objective = check_objective(objective)
    seq = encode(spec, graphs, objective)
    true = seq[:, spec.prompt_len:]
    gen = path_accuracy(generate(next_logits, spec, seq, objective), true)
    tf = path_accuracy(teacher_forced(next_logits, spec, seq, objective), true)
    chance = chance_levels(spec, objective)
    rows = [{"position": j + 1, "generated_accuracy": gen["per_position"][j],
             "teacher_forced_accuracy": tf["per_position"][j], "chance": chance["teacher_forced"][j],
             "generated_chance": chance["generated"][j]} for j in range(spec.l)]
    return {"path_accuracy": rows, "exact_match": gen["exact_match"],
            "exact_match_chance": chance["exact_match"], "n_graphs": len(seq)}


# ----------------------------------------------------------------------------------------------------------
# plan recovery: does the state at the last prompt position ("=") already hold the path?
def plan_targets(spec: PathStar, graphs: Graphs):  # -> (B, l-1) labels of path positions 2..l (start -> goal)
    return true_paths(spec, graphs, "ntp")[:, 1:]


def plan_candidates(spec: PathStar, graphs: Graphs):  # -> (B, l-1, d): labels of the d nodes at each depth
    depth = np.arange(1, spec.l)                                                    # (l-1,)
    arms = np.arange(spec.d)                                                        # (d,)
    nodes = 1 + arms[None, :] * (spec.l - 1) + (depth[:, None] - 1)                 # (l-1, d) canonical
    return graphs.labels[:, nodes]


def prefix_features(model, spec: PathStar, graphs: Graphs, chunk: int = 512) -> dict:
    """{hook: (B, C)} the model's activations at the last prompt position (the "=" token), per hook."""
    prompts = encode(spec, graphs, "ntp")[:, :spec.prompt_len]                      # same prompt for all
    out = {}
    for s in _chunks(len(prompts), chunk):
        for hook, acts in model.activations(prompts[s]).items():
            out.setdefault(hook, []).append(np.asarray(acts[:, -1], dtype=np.float64))
    return {hook: np.concatenate(parts) for hook, parts in out.items()}


def plan_probe(features, spec: PathStar, graphs: Graphs, frac_fit: float = 0.5, seed: int = 0,
               l2: float = 1e-4) -> list:
    """Held-out accuracy of a linear probe features (B, C) -> the label at path positions 2..l.

    One multinomial logistic regression over the n labels per position (probes.fit_logistic), fitted on
    `frac_fit` of the graphs; on the others its prediction is the most probable of the d candidate nodes
    at that depth, so chance is 1/d. Returns [{"position", "accuracy", "chance"}] for positions 2..l."""
    from tinyseq.probes import fit_logistic, predict_proba, split_sequences

    X = np.asarray(features, dtype=np.float64)
    targets, cands = plan_targets(spec, graphs), plan_candidates(spec, graphs)     # (B, l-1), (B, l-1, d)
    fit, held = split_sequences(len(X), frac_fit, seed)
    rows = []
    for j in range(spec.l - 1):
        W, b = fit_logistic(X[fit], targets[fit, j], spec.n, l2=l2)
        proba = predict_proba(X[held], W, b)                                        # (N, n)
        scores = np.take_along_axis(proba, cands[held, j], axis=1)                  # (N, d)
        pred = np.take_along_axis(cands[held, j], scores.argmax(axis=1)[:, None], axis=1)[:, 0]
        rows.append({"position": j + 2, "accuracy": float((pred == targets[held, j]).mean()),
                     "chance": 1.0 / spec.d})
    return rows


# ----------------------------------------------------------------------------------------------------------
# the model and the schedule for path-star (examples/pathstar_notes.md has the measurements behind them)
#
# Every path step is a lookup "find the edge whose child is x, copy its parent": a circuit of two attention
# layers. Before it forms, the loss sits on a plateau (lookup steps right about 1 time in 5, exact match ~0),
# then drops to ~0 within ~100 steps. The plateau's length is set by the init scale r: the circuit is a
# product of several weight matrices (queries, keys, values, outputs of both layers), all drawn with std r,
# and near 0 each one's gradient is scaled by the others, a saddle that takes longer to leave the smaller r
# is. Measured on pathstar:d=2,l=5,n=20, reverse, lr 3e-3 constant, batch 128: GPT-2's r = 0.02 leaves
# the plateau after ~1350 steps (seed 0), r = 0.1 after 350-650 (seeds 0, 1, 2), a PyTorch-default init
# (nn.Embedding N(0, 1), nn.Linear U(+-1/sqrt(fan_in))) after ~400. A cosine schedule over a budget shorter
# than the plateau anneals the lr away before the drop, and nothing is learned.
# The compare grid's calibration (examples/pathstar_notes.md section 8): d_mlp 128 leaves the plateau where 256
# does at 0.83 of the cost; batch 64 needs ~1.5x the steps of batch 128 at ~0.45x the cost a step; lr 1e-2,
# d_model 32 and init 0.2 stayed on the plateau. Reverse at batch 64 passed exact match 0.95 by step 450-900
# (4 seeds), so 1,150 steps (the slowest of 3 seeds x 1.25) reached 0.9995 (mean of 3 seeds).
MODEL = {"transformer": {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 128,
                         "initializer_range": 0.1},
         "gru": {"hidden": 64}, "lstm": {"hidden": 64}, "rnn": {"hidden": 64}}
# `train` on a path-star task starts from these instead of the HMM defaults (any option given wins):
# constant lr after the warmup, so a budget never ends inside the plateau; a small held-out set for the
# progress line (the probe measures on 2,000 graphs). The learning rate is the kind's own
# (train.DEFAULT_LR: 3e-3 transformer, 1e-2 recurrent); the transformer's was checked here, not the GRU's.
TRAIN = {"batch": 64, "schedule": "constant", "steps": 1150, "eval_sequences": 500, "eval_every": 100}
PROBE_GRAPHS = 2000           # held-out graphs of `tinyseq probe` (the checkpoint's eval seed draws them)


def path_batch(spec: PathStar, seq, variant: str = "ntp", heads: int = 1):
    # (B, L) sequences -> Batch: inputs (B, T), N targets (B, T), N loss weights (B, T)
    """The training batch of train()'s task interface. Head i reads input position t and predicts sequence
    token t + i; its loss weight is 1 exactly where that token is a path token (so head 1's mask is
    training_arrays' mask, and heads past the end of the sequence are padded with weight 0)."""
    inputs, _, _ = training_arrays(spec, seq, variant)
    B, L, P, T = len(seq), spec.seq_len, spec.prompt_len, spec.n_ctx
    padded = np.concatenate([seq, np.zeros((B, heads), dtype=seq.dtype)], axis=1)       # (B, L + N)
    t = np.arange(T)
    targets = [np.ascontiguousarray(padded[:, i:i + T]) for i in range(1, heads + 1)]
    weights = [np.broadcast_to(((t + i >= P) & (t + i <= L - 1)).astype(np.float32), (B, T)).copy()
               for i in range(1, heads + 1)]
    return Batch(inputs, targets, weights)


class PathStarTask:
    """The path-star task behind train()'s task interface (tinyseq/train.py's SequenceTask is the HMM one):
    check the model, write a batch with its loss weights, draw the held-out graphs, evaluate."""

    def __init__(self, spec: PathStar, objective):
        self.spec, self.objective = spec, objective
        self.variant = objective.variant or "ntp"            # mtp:N writes the path start -> goal

    def check(self, model_config) -> None:
        if model_config.n_ctx != self.spec.n_ctx:
            raise TinyseqError(f"{self.spec.label} is {self.spec.seq_len} tokens, so the model reads "
                               f"n_ctx={self.spec.n_ctx}, not {model_config.n_ctx}: leave --n-ctx out")

    def start_facts(self, graphs) -> dict:  # what the first progress line says about the task
        return {"chance_exact_match": chance_levels(self.spec, self.variant)["exact_match"]}

    def batch(self, rng, batch: int, n_ctx: int):
        seq = encode(self.spec, sample_graphs(self.spec, rng, batch), self.variant)
        return path_batch(self.spec, seq, self.variant, self.objective.heads)

    def eval_set(self, n_ctx: int, n: int, seed: int) -> Graphs:
        return eval_set(self.spec, n, seed)

    def evaluate(self, model, graphs: Graphs) -> dict:  # the "eval" event: exact match, accuracy by position
        return evaluate_paths(model.logits, self.spec, graphs, self.variant)


# ----------------------------------------------------------------------------------------------------------
# `tinyseq probe` on a path-star checkpoint
def analyse_paths(model, spec: PathStar, variant: str, random_model, n_graphs: int = PROBE_GRAPHS,
                  eval_seed: int = 0, seed: int = 0) -> dict:
    """Paths by generation and teacher-forced, on `n_graphs` held-out graphs drawn from `eval_seed`, and plan
    recovery per hook (probe split drawn from `seed`) next to `random_model` (same architecture, untrained).
    -> {path_accuracy: [{position, generated_accuracy, teacher_forced_accuracy, chance, ...}], exact_match,
        plan_recovery: [{hook, target, k, accuracy, chance, random_init_accuracy}], ...}"""
    graphs = eval_set(spec, n_graphs, eval_seed)
    paths = evaluate_paths(model.logits, spec, graphs, variant)
    trained = prefix_features(model, spec, graphs)
    control = prefix_features(random_model, spec, graphs)
    rows = []
    for hook, features in trained.items():
        for p, q in zip(plan_probe(features, spec, graphs, seed=seed), plan_probe(control[hook], spec, graphs,
                                                                              seed=seed)):
            rows.append({"hook": hook, "target": f"path node {p['position']}", "k": p["position"],
                         "accuracy": p["accuracy"], "chance": p["chance"], "random_init_accuracy": q["accuracy"]})
    return {"task": spec.label, "objective": variant, "eval_seed": eval_seed, **paths, "plan_recovery": rows,
            "chance": chance_levels(spec, variant)}
