"""Training objectives: next-token prediction, multi-token prediction, and myopic training.

    ntp          loss = CE(head 1, x_{t+1})                                   the ordinary objective
    mtp:N        loss = sum_i w_i CE(head i, x_{t+i}),  i = 1..N             Gloeckle et al. 2024
    --myopia M   forward unchanged; the backward cuts every path from the    Wu, Morris, Levine 2024
                 loss at t back into positions more than M steps earlier

Each CE is the mean over the same B * n_ctx positions: every training sequence is sampled n_ctx + N tokens
long, so input position t (t = 1..n_ctx) has all N targets x_{t+1}..x_{t+N} (with N = 1 that is exactly the
ordinary n_ctx + 1). The weights default to all 1, so mtp:N minimises the plain sum of the N cross-entropies.

Where the pieces live:
  - the number of heads is architecture: the model config's `n_future`. Head 1 is the model's own unembedding
    (transformer `unembed.W_U`) or readout (rnn/gru/lstm `readout.weight`); heads i = 2..N are extra linear
    maps of the same final state, `mtp.{i}.W_U` (C, V) / `mtp.{i}.b_U` (V,) after ln_final for the
    transformer, `mtp.{i}.weight` (V, H) / `mtp.{i}.bias` (V,) on the top hidden state for recurrent nets.
    They sit in the flat Params buffer, so AdamW, clipping and checkpoints cover them like any tensor.
  - the objective string, the head weights and the myopia horizon are training settings
    (TrainConfig.objective / .mtp_weights / .myopia). A checkpoint records them in meta["train"] and, parsed,
    in meta["objective"] = {"objective", "heads", "weights", "myopia"}, so probes and analyses can tell.
  - only head 1 is ever used as the next-token predictor: model.logits(), the evaluation against the Bayes
    floor h(L), probes, and tinyseq.load(path).logits are the same for every objective.

Myopia M, per model family:
  - transformer: in every attention layer, the key and value that query t reads from position s with
    t - s > M are computed from a stop-gradient copy of s's ln1 output; W_K, W_V, b_K, b_V still get their
    full gradient (Transformer._block_backward, ops/ops_numba.attention_backward(..., window=M)). The cut is
    per layer, so across layers the reach compounds through intermediate positions (up to n_layers * M).
    M = 0 is fully myopic: no gradient crosses positions.
  - rnn/gru/lstm: truncated backpropagation through time. The loss at t reaches hidden states at most M
    steps back, t-M..t, which is Recurrent.backward's bptt_window = M + 1 (a window W reaches t-W+1..t).
  - M >= n_ctx - 1 cuts nothing: training is bit-for-bit ordinary training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinyseq.errors import TinyseqError

OBJECTIVES = ("ntp", "mtp:N")
PATH_OBJECTIVES = ("reverse", "teacherless")   # change what the path-star task writes (tinyseq/pathstar.py)


@dataclass(frozen=True)
class Objective:
    """A parsed objective: N heads, their loss weights, the myopia horizon (None: ordinary backward), and the
    path-star variant (None; "reverse" or "teacherless" change the task's sequences, not the loss)."""
    heads: int = 1                       # N: head i predicts x_{t+i}
    weights: tuple = (1.0,)              # w_1..w_N
    myopia: int | None = None            # M
    variant: str | None = None           # a PATH_OBJECTIVES entry, or None

    @property
    def name(self) -> str:
        return self.variant or ("ntp" if self.heads == 1 else f"mtp:{self.heads}")

    def to_dict(self) -> dict:
        return {"objective": self.name, "heads": self.heads, "weights": list(self.weights), "myopia": self.myopia}


@dataclass
class Batch:
    """One training batch, as a task writes it: the inputs, the targets of each head and, where only some
    targets count (path-star: the path tokens), their loss weights."""
    inputs: np.ndarray                   # (B, T) int
    targets: list                        # N arrays (B, T) int: head i's targets
    weights: list | None = None          # N arrays (B, T) float >= 0, or None: every target counts 1

    @classmethod
    def from_tokens(cls, tokens, heads: int) -> "Batch":  # (B, T + N) sampled tokens -> inputs, N targets
        inputs, targets = split_tokens(tokens, heads)
        return cls(inputs, targets)


# ----------------------------------------------------------------------------------------------------------
# parsing: every bad value is one TinyseqError line
def parse_objective(text) -> int:
    """'ntp' -> 1, 'mtp:N' -> N (N >= 1; mtp:1 is ntp); the path-star variants 'reverse', 'teacherless' -> 1."""
    hint = ("use --objective ntp (next token) or mtp:N (N >= 1 future tokens), e.g. mtp:2; path-star tasks also "
            "take reverse and teacherless")
    if not isinstance(text, str):
        raise TinyseqError(f"objective must be a string, got {text!r}: {hint}")
    t = text.strip().lower()
    if t == "ntp" or t in PATH_OBJECTIVES:
        return 1
    if t.startswith("mtp:"):
        n = t[4:].strip()
        if n.isdigit() and int(n) >= 1:
            return int(n)
        raise TinyseqError(f"objective {text!r}: N in mtp:N must be a whole number >= 1, got {n!r}; {hint}")
    raise TinyseqError(f"unknown objective {text!r}: {hint}")


def parse_weights(weights, heads: int) -> tuple:
    """'w1,w2,...' (or a sequence of numbers; None: all 1) -> a tuple of N non-negative floats, not all 0."""
    if weights is None:
        return (1.0,) * heads
    if isinstance(weights, str):
        parts = [w.strip() for w in weights.split(",")]
        try:
            values = [float(w) for w in parts]
        except ValueError:
            raise TinyseqError(f"mtp-weights must be numbers separated by commas, got {weights!r}: "
                               f"e.g. --mtp-weights 1,0.5") from None
    else:
        try:
            values = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise TinyseqError(f"mtp-weights must be a list of numbers, got {weights!r}") from None
    if len(values) != heads:
        raise TinyseqError(f"mtp-weights has {len(values)} weight{'s' if len(values) != 1 else ''} but the objective "
                           f"has {heads} head{'s' if heads != 1 else ''}: give one weight per head "
                           f"(--objective mtp:{len(values)} for {len(values)})")
    if not all(math.isfinite(w) and w >= 0 for w in values):
        raise TinyseqError(f"mtp-weights must be finite and >= 0, got {weights!r}")
    if not any(w > 0 for w in values):
        raise TinyseqError(f"mtp-weights are all 0, so nothing would be learned: give at least one positive weight")
    return tuple(values)


def check_myopia(myopia) -> int | None:
    """None (ordinary training) or a whole number M >= 0."""
    if myopia is None:
        return None
    if isinstance(myopia, bool) or not isinstance(myopia, (int, np.integer)) or myopia < 0:
        raise TinyseqError(f"myopia must be a whole number of positions >= 0 (0: fully myopic), got {myopia!r}; "
                           f"leave it out for ordinary training")
    return int(myopia)


def objective_from(config) -> Objective:
    """The Objective of a TrainConfig (fields objective, mtp_weights, myopia), checked."""
    text = getattr(config, "objective", "ntp")
    heads = parse_objective(text)
    variant = text.strip().lower() if text.strip().lower() in PATH_OBJECTIVES else None
    return Objective(heads=heads, weights=parse_weights(getattr(config, "mtp_weights", None), heads),
                     myopia=check_myopia(getattr(config, "myopia", None)), variant=variant)


def check_heads(objective: Objective, model) -> None:
    """The model must have exactly the heads the objective trains."""
    have = getattr(model.config, "n_future", 1)
    if have != objective.heads:
        raise TinyseqError(f"the model has {have} output head{'s' if have != 1 else ''} but --objective "
                           f"{objective.name} trains {objective.heads}: build it with n_future={objective.heads} "
                           f"(the train command does this from --objective)")


# ----------------------------------------------------------------------------------------------------------
# the loss and its gradient
def split_tokens(tokens, heads: int):  # (B, n_ctx + N) -> inputs (B, n_ctx), [targets of head i (B, n_ctx)]
    """Inputs x_1..x_n_ctx and, for head i = 1..N, the targets x_{1+i}..x_{n_ctx+i}."""
    n_ctx = tokens.shape[1] - heads
    return (np.ascontiguousarray(tokens[:, :n_ctx]),
            [np.ascontiguousarray(tokens[:, i:i + n_ctx]) for i in range(1, heads + 1)])


def objective_forward(model, tokens, objective: Objective, ops):
    # tokens (B, n_ctx + N) -> total loss, [per-head mean CE], saved (for objective_backward)
    """loss = sum_i w_i * mean CE(head i, x_{t+i}). ops: the model's cross-entropy pair (ops.py or ops_numba.py)."""
    return batch_forward(model, Batch.from_tokens(tokens, objective.heads), objective, ops)


def batch_forward(model, batch: Batch, objective: Objective, ops):  # -> total, [per-head CE], saved
    """objective_forward on a task's Batch: head i's CE is the mean over its targets, weighted by the batch's
    loss weights when it has them (sum_n w_n CE_n / sum_n w_n)."""
    logits, cache = model.forward(batch.inputs)                                # (B, n_ctx, V) head 1
    heads = [logits] + (model.mtp_logits(cache) if objective.heads > 1 else [])
    weights = batch.weights or [None] * len(heads)
    losses, probs = [], []
    for lg, tg, wt in zip(heads, batch.targets, weights):
        loss_i, probs_i = ops.cross_entropy_forward(lg, tg, weights=wt)
        losses.append(float(loss_i))
        probs.append(probs_i)
    total = sum(w * l for w, l in zip(objective.weights, losses))   # ntp: 1.0 * loss, exactly loss
    return total, losses, (cache, probs, batch.targets, batch.weights)


def objective_backward(model, saved, objective: Objective, ops):  # -> dx0; accumulates into params.grad
    """d(total)/d(logits_i) = w_i (softmax_i - onehot_i) / (B * n_ctx), pushed through the model with the
    objective's myopia (with loss weights u: w_i u_n (softmax_i - onehot_i) / sum u)."""
    cache, probs, targets, loss_weights = saved
    loss_weights = loss_weights or [None] * len(targets)
    dlogits = [None if w == 0 else ops.cross_entropy_backward(
                   p, tg, scale=w * (1.0 / (tg.size if u is None else float(u.sum()))), weights=u)
               for w, p, tg, u in zip(objective.weights, probs, targets, loss_weights)]
    if dlogits[0] is None:                           # head 1 weighted 0: the backward still starts there
        dlogits[0] = np.zeros_like(probs[0])
    return model_backward(model, dlogits[0], cache, objective.myopia, dlogits[1:] or None)


def model_backward(model, dlogits, cache, myopia=None, dmtp=None):
    """One backward call for either family, with myopia M mapped to each one's cut:
    transformer: the attention cut, window M; recurrent: truncated BPTT with bptt_window = M + 1."""
    from tinyseq.models import model_kind

    if model_kind(model) == "transformer":
        return model.backward(dlogits, cache, myopia=myopia, dmtp=dmtp)
    return model.backward(dlogits, cache, bptt_window=None if myopia is None else myopia + 1, dmtp=dmtp)
