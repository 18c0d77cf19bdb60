"""Training: next-token cross-entropy on batches sampled from the process, AdamW, warmup + cosine, and an
evaluation that puts the loss of every context position next to its Bayes floor h(L).

    tokens  = sample(process, batch, n_ctx + 1)              (B, n_ctx + 1)  fresh every step
    logits  = model(tokens[:, :-1])                          (B, n_ctx, V)   contexts x_1..t, t = 1..n_ctx
    loss    = mean CE(logits, tokens[:, 1:])                 position t predicts x_{t+1}: floor h(t+1)
    grad    -> clip by global norm -> AdamW(lr(step))        one loop each over the flat buffers

Read `train_step` first: those lines, on one screen. `train` wraps it in the budget (steps, tokens or time),
the schedule, evaluation, checkpoints, resume and Ctrl-C. The optimiser and schedule are in tinyseq/optim.py.

Objectives (tinyseq/objectives.py): --objective mtp:N samples n_ctx + N tokens and adds heads 2..N predicting
x_{t+2}..x_{t+N} to the loss (weighted by --mtp-weights); --myopia M changes only the backward. The evaluation
below is always head 1 against the next-token floor, so runs with different objectives compare directly.

The best possible mean loss is mean h(2..n_ctx+1) (0.80251 nats for mess3 with n_ctx 10), so "gap to the
floor" is an absolute measure of how much of the learnable structure the model has not learned yet.

train() never prints: it hands event dicts to a callback (the CLI draws a progress bar from them).
Determinism: the same seed, config and thread count give bit-identical tensors, and a run stopped and resumed
from its checkpoint ends bit-identical to an uninterrupted one, for --steps and --tokens budgets. With a
--time budget the schedule follows the wall clock, so no two runs are identical (resume continues the
schedule from the elapsed time saved in the checkpoint).
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.models import model_kind
from tinyseq.nn.ops import log_softmax
from tinyseq.objectives import Batch, batch_forward, check_heads, objective_backward, objective_from
from tinyseq.optim import adamw_step, adamw_step_numba, clip_grad_norm, lr_at
from tinyseq.pathstar import PathStar, PathStarTask
from tinyseq.processes import sample

SCHEDULES = ("cosine", "constant")
# Measured on mess3 (2 shared cores, batch 256, cosine to zero, float32): the default transformer reaches
# 0.15% of the floor in 200 steps and 0.10% in 300 (about 15 s); GRU / LSTM / RNN with lr 1e-2 reach
# 0.04% in 300 steps. ANCHORS.md found the same rates best in PyTorch.
DEFAULT_LR = {"transformer": 3e-3, "rnn": 1e-2, "gru": 1e-2, "lstm": 1e-2}
DEFAULT_STEPS = 300              # the budget when none of steps / tokens / time is given
# --preset paper, per process. mess3: the best PyTorch settings from ANCHORS.md (lr 3e-3, batch 256, warmup 50).
# rrxor: chosen for a 40 s CPU budget (BENCHMARKS.md, "rrxor in 40 s"): lr 1e-3 with a 250-step warmup and Adam
# beta2 0.95. Searched at 500 steps (the budget estimated under load): the old 50-step warmup gave concatenated-hook
# belief MSE 5.2e-3, higher or lower lr with it no better than 4.2e-3; the long warmup 4.1e-3, and beta2 0.95 with
# it 3.9e-3 (better on each of 3 seeds). On 2 idle cores `--time 40` trains 1,161-1,466 steps: 2.6e-3.
PAPER_TRAIN = {"mess3": {"lr": 3e-3, "batch": 256},
               "rrxor": {"lr": 1e-3, "batch": 64, "warmup": 250, "betas": (0.9, 0.95)}}
EVAL_CHUNK = 1024            # sequences per forward pass during evaluation (bounds memory)
TREE_MAX_SHARE = 0.4         # evaluate through the prefix tree when at most this share of positions are distinct
#                              prefixes (break-even measured ~0.45; mess3 at n_ctx 10: 0.18; uniform tokens at 40: 0.83)
EXACT_FLOOR_MAX = 200_000    # compute h(L) exactly when vocab ** n_ctx is at most this (else estimate it)


class TrainingDiverged(TinyseqError):
    """The loss or the gradient became NaN or infinite; the message names the step and the last checkpoint."""


@dataclass
class TrainConfig:
    """How to train. The defaults are the fastest path to the Bayes floor on mess3 found on a 2-core CPU
    (see the train command's help); ANCHORS.md has the PyTorch settings they were checked against."""
    lr: float | None = None          # peak learning rate after the warmup; None: 3e-3 transformer, 1e-2 rnn/gru/lstm
    betas: tuple = (0.9, 0.999)      # AdamW moment decay rates (beta1, beta2), PyTorch's defaults
    eps: float = 1e-8                # AdamW denominator guard
    weight_decay: float = 0.0        # decoupled (AdamW) weight decay per step, times lr; 0 = plain Adam
    warmup: int = 50                 # steps of linear warmup: lr * (step + 1) / warmup
    schedule: str = "cosine"         # "cosine": lr decays to exactly 0 at the end of the budget; "constant"
    clip: float = 1.0                # max global L2 norm of the gradient; 0 = no clipping
    batch: int = 256                 # sequences per step; each predicts n_ctx tokens
    steps: int | None = None         # budget in optimiser steps (300 if no budget is given); one budget only
    tokens: int | None = None        # budget in predicted tokens (batch * n_ctx per step)
    time: float | None = None        # budget in seconds of wall time; the schedule follows the clock
    eval_every: int = 100            # steps between held-out evaluations (0 = only at the end)
    eval_sequences: int = 4096       # size of the fixed held-out set
    eval_seed: int = 0               # the held-out set depends only on this (and the process, n_ctx)
    checkpoint_every: int = 0        # steps between checkpoints (0 = only at the end)
    seed: int = 0                    # initial weights and the training batches
    dtype: str = "float32"           # "float32" (fast) or "float64" (for checks)
    threads: str | int | None = "auto"  # BLAS threads: auto (timed on the first steps, watches other programs) or N
    backend: str = "numba"           # "numba" kernels or the "numpy" reference (where the model has both)
    objective: str = "ntp"           # "ntp": next token; "mtp:N": N heads, head i predicts x_{t+i} (objectives.py)
    mtp_weights: str | None = None   # loss weights of the N heads, "w1,w2,..."; None: all 1 (the plain sum)
    myopia: int | None = None        # M: the loss at t sends no gradient to positions < t-M (rnn: BPTT window M+1)

    def __post_init__(self):
        if isinstance(self.threads, str) and self.threads.strip().isdigit():
            self.threads = int(self.threads)         # --threads 2 arrives as text (the option also takes auto)

    def validate(self) -> "TrainConfig":
        """One-line TinyseqError for any setting training cannot run with."""
        def number(name, value, lo=None, lo_open=True, integer=False, allow_none=False):
            if value is None and allow_none:
                return
            ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            if ok and integer:
                ok = float(value).is_integer()
            if ok:
                ok = math.isfinite(float(value)) and (lo is None or (value > lo if lo_open else value >= lo))
            if not ok:
                what = "an integer" if integer else "a number"
                bound = "" if lo is None else f" {'>' if lo_open else '>='} {lo:g}"
                raise TinyseqError(f"{name.replace('_', '-')} must be {what}{bound}, got {value!r}")

        number("lr", self.lr, 0, allow_none=True)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise TinyseqError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        number("eps", self.eps, 0)
        number("weight_decay", self.weight_decay, 0, lo_open=False)
        number("warmup", self.warmup, 0, lo_open=False, integer=True)
        number("clip", self.clip, 0, lo_open=False)
        number("batch", self.batch, 0, integer=True)
        number("steps", self.steps, 0, integer=True, allow_none=True)
        number("tokens", self.tokens, 0, integer=True, allow_none=True)
        number("time", self.time, 0, allow_none=True)
        number("eval_every", self.eval_every, 0, lo_open=False, integer=True)
        number("eval_sequences", self.eval_sequences, 0, integer=True)
        number("checkpoint_every", self.checkpoint_every, 0, lo_open=False, integer=True)
        number("seed", self.seed, 0, lo_open=False, integer=True)
        number("eval_seed", self.eval_seed, 0, lo_open=False, integer=True)
        from tinyseq.threads import parse_threads

        parse_threads(self.threads)
        budgets = [name for name in ("steps", "tokens", "time") if getattr(self, name) is not None]
        if len(budgets) > 1:
            raise TinyseqError(f"give one budget, not {' and '.join('--' + b for b in budgets)}: "
                               f"--steps N, --tokens N or --time SECONDS")
        if self.schedule not in SCHEDULES:
            raise TinyseqError(f"unknown schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.dtype not in ("float32", "float64"):
            raise TinyseqError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.backend not in ("numba", "numpy"):
            raise TinyseqError(f"backend must be numba or numpy, got {self.backend!r}")
        from tinyseq.objectives import objective_from

        objective_from(self)                         # objective, mtp_weights, myopia: one-line errors
        return self

    def total_steps(self, n_ctx: int) -> int | None:
        """The step budget (None for a time budget)."""
        if self.time is not None:
            return None
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / (self.batch * n_ctx)))
        return int(self.steps if self.steps is not None else DEFAULT_STEPS)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TinyseqError(f"unknown training settings {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d).validate()


def train_options() -> list[dict]:
    """Every TrainConfig field as a CLI option: [{"name", "type" (int|float|str|tuple), "default", "help"}],
    the help being the field's comment, so the command line cannot drift from the dataclass."""
    from tinyseq.models import field_comments

    comments = field_comments(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        annotation = str(f.type)
        typ = (tuple if "tuple" in annotation else str if "str" in annotation else float if "float" in annotation
               else int if "int" in annotation else str)
        out.append({"name": f.name, "type": typ, "default": f.default, "help": comments.get(f.name, "")})
    return out


# ----------------------------------------------------------------------------------------------------------
# memory: estimated from the sizes before anything is allocated, so a typo like --batch 1000000000000 is a
# one-line refusal instead of minutes of swapping or the kernel's OOM killer
MEMORY_FRACTION = 0.8        # refuse a run whose estimate exceeds this share of the memory available now


def count_params(model_config) -> int:
    """Number of parameters, from the config alone (n_layers could be absurd: count one layer, multiply)."""
    from tinyseq.nn import recurrent, transformer
    from tinyseq.nn.transformer import TransformerConfig

    spec = transformer.param_spec if isinstance(model_config, TransformerConfig) else recurrent.param_spec
    size = lambda cfg: sum(math.prod(shape) for _, shape in spec(cfg))   # noqa: E731
    one, two = size(dataclasses.replace(model_config, n_layers=1)), size(dataclasses.replace(model_config, n_layers=2))
    return one + (two - one) * (model_config.n_layers - 1)


def estimate_train_bytes(model_config, config: TrainConfig) -> int:
    """Rough peak bytes of train(): params, gradient and two AdamW moments, one step's activation record (a
    generous count of the arrays each layer keeps for its backward), and the held-out evaluation set."""
    from tinyseq.nn.transformer import TransformerConfig

    c = model_config
    item = 8 if config.dtype == "float64" else 4
    T, V, L, heads = c.n_ctx, c.d_vocab, c.n_layers, c.n_future
    if isinstance(c, TransformerConfig):
        per_token = L * (16 * c.d_model + 4 * c.d_mlp + 6 * c.n_heads * c.d_head + 3 * c.n_heads * T) + 4 * V * heads
    else:
        per_token = L * 8 * c.hidden * 4 + 4 * V * heads
    step = config.batch * T * per_token * item + config.batch * (T + heads) * 16       # + sampled uniforms, tokens
    n_eval = config.eval_sequences
    evaluation = n_eval * T * (V * 8 * 2 + 16) + min(n_eval, EVAL_CHUNK) * T * per_token * item
    return 4 * count_params(c) * item + step + evaluation


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (MemAvailable on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(model_config, config: TrainConfig) -> int:
    """The estimate of estimate_train_bytes, or a one-line TinyseqError when it will not fit."""
    need = estimate_train_bytes(model_config, config)
    have = available_memory()
    if have is not None and need > MEMORY_FRACTION * have:
        raise TinyseqError(f"this run needs about {need / 2**30:,.1f} GB of memory but {have / 2**30:,.1f} GB "
                           f"is available: use smaller sizes (--batch {config.batch}, --n-ctx, --d-model, "
                           f"--n-layers, --eval-sequences {config.eval_sequences})")
    return need


# ----------------------------------------------------------------------------------------------------------
# evaluation against the Bayes floor
@dataclass
class EvalSet:
    """A fixed held-out set: inputs x_1..n_ctx, targets x_2..n_ctx+1, the exact Bayes next-token distribution
    at every position, and the floor h(L) of each predicted position L = 2..n_ctx+1."""
    inputs: np.ndarray       # (N, n_ctx) int
    targets: np.ndarray      # (N, n_ctx) int
    bayes: np.ndarray        # (N, n_ctx, V) float64: P*(x_{t+1} | x_1..t)
    floors: np.ndarray       # (n_ctx,) h(2..n_ctx+1), nats
    floor_exact: bool        # False: floors estimated as the mean entropy of `bayes` (long contexts)


def make_eval_set(process, n_ctx: int, n_sequences: int = 4096, seed: int = 0) -> EvalSet:
    from tinyseq.beliefs import belief_states, myopic_entropies, next_token_probs
    from tinyseq.processes import sample

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))  # apart from the data stream
    tokens = sample(process, n_sequences, n_ctx + 1, rng)                       # (N, n_ctx + 1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    bayes = next_token_probs(process, belief_states(process, inputs))          # (N, n_ctx, V)
    factors = getattr(process, "factors", None) or [process]     # a product's h(L) is its factors' sum
    if max(f.vocab for f in factors) ** n_ctx <= EXACT_FLOOR_MAX:
        floors, exact = myopic_entropies(process, n_ctx + 1)[1:], True
    else:   # the MSP is too large to enumerate: the mean entropy of the exact predictions estimates h(L)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(bayes > 0, bayes * np.log(bayes), 0.0).sum(axis=-1)
        floors, exact = ent.mean(axis=0), False
    return EvalSet(np.ascontiguousarray(inputs), np.ascontiguousarray(targets), bayes, floors, exact)


def prefix_tree_pays(tokens) -> bool:  # (N, T) int -> whether to compute each distinct prefix once
    """At most TREE_MAX_SHARE of the positions are distinct prefixes: then a forward through the prefix tree
    (Transformer.prefix_tree_forward) beats the plain one. Each tree position costs more than a plain one (a
    gather of its ancestors' keys), so with little sharing (long contexts) the plain forward is faster."""
    from tinyseq.nn.transformer import distinct_prefixes

    return distinct_prefixes(tokens) <= TREE_MAX_SHARE * tokens.size


def evaluate(model, ev: EvalSet) -> dict:
    """Loss per position next to its floor. The expected loss at position L is h(L) + E[KL(P* || model)]:
    the floor is exact and the KL, averaged over the held-out contexts, has far less sampling noise than the
    raw cross-entropy (whose own noise, about 0.003 nats for 4096 x 10 tokens, exceeds the gaps of interest).
    The raw held-out cross-entropy is reported too, as `sampled_nats`."""
    N, T = ev.inputs.shape
    kl = np.zeros(T)
    ce = np.zeros(T)
    # a model with prefix_tree_logits (the transformer) computes each distinct prefix once, when sequences share
    # enough of them: then a chunk of EVAL_CHUNK * T sequences has at most as many rows per pass as EVAL_CHUNK
    # sequences through the plain forward
    tree = getattr(model, "prefix_tree_logits", None)
    if tree is not None and not prefix_tree_pays(ev.inputs):
        tree = None
    chunk = EVAL_CHUNK * T if tree else EVAL_CHUNK
    for lo in range(0, N, chunk):
        hi = min(N, lo + chunk)
        logq = log_softmax((tree or model.logits)(ev.inputs[lo:hi]), np.float64)               # (n, T, V)
        p = ev.bayes[lo:hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl += np.where(p > 0, p * (np.log(p) - logq), 0.0).sum(axis=(0, 2))     # (T,)
        ce -= np.take_along_axis(logq, ev.targets[lo:hi, :, None], axis=-1)[..., 0].sum(axis=0)
    kl /= N
    ce /= N
    loss = ev.floors + kl
    floor = float(ev.floors.mean())
    gap = float(kl.mean())
    return {"mean_nats": float(loss.mean()), "floor_nats": floor, "gap_nats": gap,
            "gap_percent": 100.0 * gap / floor if floor > 0 else float("inf"),
            "sampled_nats": float(ce.mean()), "floor_exact": ev.floor_exact,
            "per_position": [{"position": t + 2, "loss_nats": float(loss[t]), "floor_nats": float(ev.floors[t]),
                              "gap_nats": float(kl[t]), "sampled_nats": float(ce[t])} for t in range(T)]}


# ----------------------------------------------------------------------------------------------------------
# the task interface: all train() needs to know about what it learns. A hidden Markov process is the
# SequenceTask below; tinyseq/pathstar.py's PathStarTask is the other kind (fixed-length graph prompts, a
# loss on the path tokens only, exact match instead of a Bayes floor).
class SequenceTask:
    """Next-token training on sequences sampled from a hidden Markov process, evaluated against h(L)."""

    def __init__(self, process, objective):
        if objective.variant is not None:
            raise TinyseqError(f"--objective {objective.variant} rewrites a path-star task's path; {process.label} "
                               f"is a sequence process: use ntp or mtp:N (or --process pathstar)")
        self.process, self.objective = process, objective

    def check(self, model_config) -> None:
        return None                      # any context length: the process is sampled as long as needed

    def start_facts(self, ev: EvalSet) -> dict:
        return {"floor_nats": float(ev.floors.mean())}

    def batch(self, rng, batch: int, n_ctx: int) -> Batch:
        # N = heads targets per position: x_{t+1}..x_{t+N} (ntp: N = 1)
        tokens = sample(self.process, batch, n_ctx + self.objective.heads, rng)     # (B, n_ctx + N)
        return Batch.from_tokens(tokens, self.objective.heads)

    def eval_set(self, n_ctx: int, n: int, seed: int) -> EvalSet:
        return make_eval_set(self.process, n_ctx, n, seed)

    def evaluate(self, model, ev: EvalSet) -> dict:
        return evaluate(model, ev)


def task_for(process, objective):
    """The task interface for `process`: a PathStarTask for a path-star spec, else a SequenceTask."""
    return PathStarTask(process, objective) if isinstance(process, PathStar) else SequenceTask(process, objective)


# ----------------------------------------------------------------------------------------------------------
# run state, saved in the checkpoint so a run can resume exactly
@dataclass
class TrainState:
    step: int = 0                    # completed optimiser steps
    tokens: int = 0                  # predicted tokens so far (batch * n_ctx per step)
    seconds: float = 0.0             # wall time spent in this run so far (training and evaluation)
    step_seconds: float = 0.0        # of which in training steps
    session_tokens: int = 0          # tokens / step seconds of this process only (tokens/s; never saved)
    session_step_seconds: float = 0.0
    rng: dict | None = None          # the batch generator's bit_generator.state after `step` steps
    adam_m: np.ndarray | None = None  # (P,) AdamW first moment
    adam_v: np.ndarray | None = None  # (P,) AdamW second moment
    finished: bool = False
    last_eval: dict | None = None
    in_update: bool = False          # inside AdamW's in-place update (a Ctrl-C there must not be saved)
    last_dt: float = 0.0             # seconds of the last training step
    threads: object = None           # the thread policy in use: a count or an AutoThreads (its record is saved)

    def to_meta(self, with_clock: bool) -> dict:
        """What a checkpoint keeps. The wall clock goes in only when the budget is time (a --time run resumes
        its schedule from it); otherwise leaving it out makes the same command give the same file bytes."""
        meta = {"step": self.step, "tokens": self.tokens, "rng": self.rng, "finished": self.finished}
        if with_clock:
            meta.update(seconds=self.seconds, step_seconds=self.step_seconds)
        if self.threads is not None:
            from tinyseq.threads import threads_record
            meta["threads"] = threads_record(self.threads, with_history=with_clock)
        return meta


def apply_threads(n, step: int = 0):
    """Use n threads (tinyseq.threads' policy: BLAS gets them, Numba kernels run serially), and keep freed
    memory for the next step's activations (tinyseq.threads.keep_freed_memory). n = "auto": returns the
    AutoThreads the loop reports each step to; a count: returns it; None: threads left as they are."""
    from tinyseq import threads

    threads.keep_freed_memory()
    if n == "auto":
        return threads.start_auto_threads(step)
    if n is not None:
        return threads.set_threads(int(n))
    return None


def save_run(path, model, process, config: TrainConfig, state: TrainState) -> str:
    from tinyseq import __version__
    from tinyseq.checkpoint import save
    from tinyseq.objectives import objective_from

    meta = {"tinyseq_version": __version__, "process": process.label, "train": config.to_dict(),
            "objective": objective_from(config).to_dict(), "state": state.to_meta(config.time is not None),
            "eval": state.last_eval}
    return save(path, model, process_spec=process.to_spec(), meta=meta, adam_m=state.adam_m, adam_v=state.adam_v)


def load_run(path, backend: str | None = None):
    """(process, model, TrainConfig, TrainState) from a checkpoint written by train(), to resume it."""
    from tinyseq.checkpoint import load, model_from_checkpoint

    ckpt = load(path)
    train_meta, state_meta = ckpt.meta.get("train"), ckpt.meta.get("state")
    if not isinstance(train_meta, dict) or not isinstance(state_meta, dict) or ckpt.adam_m is None:
        raise TinyseqError(f"checkpoint {path} holds a model but no training state, so it cannot be resumed: "
                           f"start a new run with --out")
    try:
        config = TrainConfig.from_dict(train_meta)
        state = TrainState(step=int(state_meta["step"]), tokens=int(state_meta["tokens"]),
                           seconds=float(state_meta.get("seconds", 0.0)),
                           step_seconds=float(state_meta.get("step_seconds", 0.0)),
                           rng=state_meta["rng"], finished=bool(state_meta["finished"]),
                           adam_m=ckpt.adam_m.copy(), adam_v=ckpt.adam_v.copy(), last_eval=ckpt.meta.get("eval"))
    except (KeyError, TypeError, ValueError) as e:
        raise TinyseqError(f"checkpoint {path}: its training state is malformed ({e}); it cannot be resumed") \
            from None
    if backend is not None:
        config = dataclasses.replace(config, backend=backend)
    model = model_from_checkpoint(ckpt, backend=config.backend)
    if model.process is None:
        raise TinyseqError(f"checkpoint {path} does not record its process, so it cannot be resumed")
    return model.process, model, config, state


class _StopFlag:
    """First Ctrl-C sets the flag (the loop stops after the step in flight and saves); a second one raises."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


# ----------------------------------------------------------------------------------------------------------
# one training step, on one screen (min-char-rnn style); train() below keeps budgets, resume, Ctrl-C and
# evaluation around it
class NotFinite(Exception):
    """A loss or gradient norm that is NaN or infinite (train() turns it into one TrainingDiverged line)."""


def train_step(model, task, objective, config, state, rng, lr, update) -> tuple:
    """sample -> forward -> loss -> backward -> clip -> AdamW.  -> (objective loss, [loss of each head], grad norm)"""
    P = model.params
    batch = task.batch(rng, config.batch, model.config.n_ctx)  # inputs (B, n_ctx), N targets (+ loss weights)
    loss, head_losses, saved = batch_forward(model, batch, objective, model.ops)      # forward + loss
    if not math.isfinite(loss):
        raise NotFinite("the training loss", loss)
    P.zero_grad()
    objective_backward(model, saved, objective, model.ops)      # backward, with the objective's myopia if any
    grad_norm = clip_grad_norm(P.grad, config.clip)            # (P,) scaled in place to norm <= clip
    if not math.isfinite(grad_norm):
        raise NotFinite("the gradient norm", grad_norm)
    state.in_update = True      # until train() counts the step, params and moments may be half-written
    update(P.data, P.grad, state.adam_m, state.adam_v, state.step + 1, lr, *config.betas, config.eps,
           config.weight_decay)                                 # AdamW, in place
    return loss, head_losses, grad_norm


# ----------------------------------------------------------------------------------------------------------
def train(process, model, config: TrainConfig, out: str | None = None, callback=None,
          state: TrainState | None = None) -> dict:
    """Train `model` on batches sampled from `process` until the budget is spent; return the summary dict.

    out: a directory for the checkpoint (out/model.npz, written every checkpoint_every steps and at the end)
    and summary.json; None keeps everything in memory. callback(event: dict) receives "start", "step",
    "eval", "checkpoint" and "end" events. state: a TrainState from load_run to resume a run.
    Ctrl-C stops after the current step, saves a checkpoint and returns with status "interrupted".
    A NaN/inf loss or gradient raises TrainingDiverged (the last good checkpoint stays on disk).
    """
    run = _Run(process, model, config, out, callback, state)
    # overflow in a diverging step is detected (loss / gradient norm not finite) and reported in one line,
    # so NumPy's own RuntimeWarnings would only add noise
    with _StopFlag() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            status = run.loop(stop)
        except KeyboardInterrupt:
            # a second Ctrl-C (or one raised by the callback): the state is that of the last completed step,
            # unless the interrupt landed inside the update; then keep the last checkpoint on disk instead
            status = "interrupted"
    return run.finish(status)


class _Run:
    """One call of train(): the model, its run state, the budget, and the checkpoint on disk."""

    def __init__(self, process, model, config, out, callback, state):
        self.config, self.objective = _check_run(process, model, config)
        self.task = task_for(process, self.objective)
        self.task.check(model.config)
        self.process, self.model, self.emit = process, model, callback or (lambda event: None)
        self.ckpt_path = _output_path(out)
        self.out = out
        self.state = _start_state(state, model)
        self.state.threads = apply_threads(self.config.threads, self.state.step)
        self.auto_threads = getattr(self.state.threads, "after_step", None)   # --threads auto: told each step's time
        self.rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1,)))
        if self.state.rng is not None:
            self.rng.bit_generator.state = self.state.rng
        self.total = self.config.total_steps(model.config.n_ctx)
        if self.total is not None and self.state.step >= self.total:
            raise TinyseqError(f"this run already has {self.state.step} of its {self.total} steps; nothing to resume")
        self.update = adamw_step_numba if self.config.backend == "numba" else adamw_step
        self.per_step = self.config.batch * model.config.n_ctx
        self.ev = self.task.eval_set(model.config.n_ctx, self.config.eval_sequences, self.config.eval_seed)
        self.emit({"event": "start", "step": self.state.step, "steps": self.total, "time": self.config.time,
                   "params": model.params.size, "tokens_per_step": self.per_step,
                   **self.task.start_facts(self.ev), "kind": model_kind(model),
                   "checkpoint": self.ckpt_path, "objective": self.objective.to_dict()})
        # the checkpoint a resumed run started from is good; a fresh run has none of its own yet
        resumed = self.ckpt_path and self.state.step > 0 and os.path.exists(self.ckpt_path)
        self.last_ckpt_step = self.state.step if resumed else None
        self.t_start = time.perf_counter() - self.state.seconds   # this run's wall clock, continued on resume

    def loop(self, stop) -> str:
        state, config = self.state, self.config
        while True:
            elapsed = time.perf_counter() - self.t_start
            if (self.total is not None and state.step >= self.total) or (config.time is not None
                                                                         and elapsed >= config.time):
                return "finished"
            if stop.requested:
                return "interrupted"
            progress = state.step / self.total if self.total is not None else elapsed / config.time
            lr = lr_at(config, state.step, progress)
            t0 = time.perf_counter()
            try:
                loss, head_losses, grad_norm = train_step(self.model, self.task, self.objective, config,
                                                          state, self.rng, lr, self.update)
            except NotFinite as e:
                self.diverged(*e.args, lr)
            self.count_step(time.perf_counter() - t0)
            if self.auto_threads:
                self.auto_threads(state.last_dt)          # may change the BLAS thread count for the next step
            self.emit({"event": "step", "step": state.step, "steps": self.total, "time": config.time,
                       "tokens": state.tokens, "seconds": state.seconds, "tokens_per_s": self.per_step / state.last_dt,
                       "loss": head_losses[0], "objective_loss": float(loss), "head_losses": head_losses,
                       "lr": lr, "grad_norm": grad_norm,
                       "progress": state.step / self.total if self.total else min(1.0, state.seconds / config.time)})
            if config.eval_every and state.step % config.eval_every == 0:
                self.run_eval()
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                state.seconds = time.perf_counter() - self.t_start
                self.checkpoint()

    def count_step(self, dt) -> None:
        state = self.state
        state.step += 1
        state.tokens += self.per_step
        state.rng = self.rng.bit_generator.state
        state.in_update = False                       # params, moments, rng and step belong to one step again
        state.last_dt = dt
        state.step_seconds += dt
        state.session_step_seconds += dt
        state.session_tokens += self.per_step
        state.seconds = time.perf_counter() - self.t_start

    def checkpoint(self) -> None:
        if self.ckpt_path:
            save_run(self.ckpt_path, self.model, self.process, self.config, self.state)
            self.last_ckpt_step = self.state.step
            self.emit({"event": "checkpoint", "step": self.state.step, "path": self.ckpt_path})

    def run_eval(self) -> None:
        self.state.last_eval = {"step": self.state.step, **self.task.evaluate(self.model, self.ev)}
        self.emit({"event": "eval", **self.state.last_eval})

    def diverged(self, what, value, lr):
        where = (f"the last good checkpoint is {self.ckpt_path} (step {self.last_ckpt_step})"
                 if self.last_ckpt_step is not None else "no checkpoint was written")
        raise TrainingDiverged(f"{what} became {value} at step {self.state.step + 1} (lr {lr:.3g}): training "
                               f"stopped, {where}; try a smaller --lr (now {self.config.lr:g}) or --clip")

    def finish(self, status) -> dict:
        state = self.state
        state.seconds = time.perf_counter() - self.t_start
        if status == "finished" and (state.last_eval is None or state.last_eval["step"] != state.step):
            self.run_eval()
        state.finished = status == "finished"
        ckpt_path = self.ckpt_path
        if not state.in_update and (state.step > 0 or status == "finished"):
            self.checkpoint()
        elif state.in_update:
            ckpt_path = ckpt_path if self.last_ckpt_step is not None else None
        summary = make_summary(self.process, self.model, self.config, state, status, ckpt_path)
        if self.out:
            write_summary(os.path.join(self.out, "summary.json"), summary)
        self.emit({"event": "end", **summary})
        return summary


def _check_run(process, model, config):  # -> (config with its learning rate, Objective)
    config.validate()
    check_memory(model.config, config)
    objective = objective_from(config)
    check_heads(objective, model)
    if config.lr is None:                            # the measured best rate for this kind of model
        config = dataclasses.replace(config, lr=DEFAULT_LR[model_kind(model)])
    if model.config.d_vocab != process.vocab:
        raise TinyseqError(f"the model has {model.config.d_vocab} token values but {process.label} has "
                           f"{process.vocab}: build the model for this process")
    return config, objective


def _output_path(out) -> str | None:  # out/model.npz, creating out; None when the run stays in memory
    if not out:
        return None
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise TinyseqError(f"cannot create the output directory {out}: {e.strerror or e}") from None
    return os.path.join(out, "model.npz")


def _start_state(state, model) -> TrainState:  # a new state, or a resumed one that still has budget
    state = state or TrainState()
    if state.finished:
        raise TinyseqError(f"this run already finished its budget ({state.step} steps); nothing to resume: "
                           f"start a new run with another --out")
    if state.adam_m is None:
        state.adam_m, state.adam_v = np.zeros_like(model.params.data), np.zeros_like(model.params.data)
    return state


def make_summary(process, model, config, state, status, ckpt_path) -> dict:
    from tinyseq.models import config_to_dict
    from tinyseq.objectives import objective_from
    from tinyseq.threads import threads_record

    ev = state.last_eval or {}
    return {"status": status, "process": process.label, "model": config_to_dict(model.config),
            "params": model.params.size,
            "loss": {k: ev.get(k) for k in ("mean_nats", "floor_nats", "gap_nats", "gap_percent", "sampled_nats",
                                             "floor_exact", "per_position")},
            "eval_step": ev.get("step"), "steps": state.step, "tokens": state.tokens,
            "seconds": state.seconds,
            "tokens_per_s": (state.session_tokens / state.session_step_seconds
                             if state.session_step_seconds > 0 else None),
            "paths": ({k: ev[k] for k in ("exact_match", "exact_match_chance", "path_accuracy", "n_graphs")}
                      if "exact_match" in ev else None),
            "checkpoint": ckpt_path, "train": config.to_dict(),
            "threads": None if state.threads is None else threads_record(state.threads, with_history=True),
            "objective": objective_from(config).to_dict()}


def write_summary(path, summary) -> None:
    import json
    import tempfile

    from tinyseq.checkpoint import _chmod_default

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    _chmod_default(tmp)
    with os.fdopen(fd, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
