"""One flat parameter buffer with named views (the llm.c layout).

All parameters of a model live in one contiguous 1-D array `data`, and all gradients in a twin `grad`; every
named tensor (`blocks.0.attn.W_Q`, `weight_hh_l0`, ...) is a *view* into them. So AdamW, gradient clipping,
zeroing and checkpointing are each one loop over one array, and the names match the ecosystem the user moves
to next (TransformerLens for the transformer, PyTorch nn.RNN/GRU/LSTM for recurrent nets).

Write into a view (`p["x"][...] = v`), never rebind it: rebinding would detach it from the flat buffer.
"""
from __future__ import annotations

import numpy as np

from tinyseq.errors import TinyseqError


class Params:
    """Named views into one flat `data` buffer and one flat `grad` buffer.

    spec: list of (name, shape) in a fixed order; that order is the layout of the flat buffer.
    """

    def __init__(self, spec: list[tuple[str, tuple[int, ...]]], dtype=np.float32):
        self.spec = [(name, tuple(int(d) for d in shape)) for name, shape in spec]
        self.dtype = np.dtype(dtype)
        n = sum(int(np.prod(shape)) for _, shape in self.spec)
        self.data = np.zeros(n, dtype=self.dtype)   # (P,) every parameter
        self.grad = np.zeros(n, dtype=self.dtype)   # (P,) their gradients, accumulated by backward
        self.values: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.offsets: dict[str, tuple[int, int]] = {}
        at = 0
        for name, shape in self.spec:
            size = int(np.prod(shape))
            self.values[name] = self.data[at:at + size].reshape(shape)
            self.grads[name] = self.grad[at:at + size].reshape(shape)
            self.offsets[name] = (at, at + size)
            at += size

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def names(self) -> list[str]:
        return [name for name, _ in self.spec]

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every tensor under its ecosystem name (what a checkpoint stores)."""
        return {name: self.values[name].copy() for name in self.names()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy tensors in by name; every name must be present with the right shape (checked by the caller
        for user-facing messages; asserted here)."""
        for name, shape in self.spec:
            arr = np.asarray(state[name])
            assert arr.shape == shape, f"{name}: expected {shape}, got {arr.shape}"
            self.values[name][...] = arr

    def astype(self, dtype) -> "Params":
        """A new Params of another dtype with the same values (float64 for checks, float32 for speed)."""
        out = Params(self.spec, dtype)
        out.data[...] = self.data
        return out


def check_sizes(cfg, owner: str, names) -> None:
    """The size checks every model config shares, each failure one TinyseqError line saying how to fix it:
    the named fields are positive integers, n_future (output heads) too, and a model needs at least two token
    values and a context of at least two tokens. owner names the model in the message ("transformer")."""
    def is_int(v):
        return not isinstance(v, bool) and isinstance(v, (int, np.integer))

    for name in names:
        value = getattr(cfg, name)
        if not is_int(value) or value < 1:
            raise TinyseqError(f"{owner} {name} must be a positive integer, got {value!r}: "
                               f"pass e.g. --{name.replace('_', '-')} {getattr(type(cfg), name)}")
    n = cfg.n_future
    if not is_int(n) or n < 1:
        raise TinyseqError(f"{owner} n_future (output heads) must be a positive integer, got {n!r}: "
                           f"it is N of --objective mtp:N (1 for ntp)")
    if cfg.n_ctx < 2:
        raise TinyseqError(f"{owner} n_ctx must be at least 2 (one token predicts the next), "
                           f"got {cfg.n_ctx}: pass a longer context, e.g. --n-ctx 10")
    if cfg.d_vocab < 2:
        raise TinyseqError(f"{owner} d_vocab must be at least 2, got {cfg.d_vocab}: "
                           f"it is the number of token values of the process")


def check_tokens(tokens, cfg) -> np.ndarray:  # (B, T) int -> the same array, or one TinyseqError line
    """The token check every model shares (one behaviour for all): an integer array (B, T) with
    1 <= T <= cfg.n_ctx and values in 0..cfg.d_vocab-1. A 1-D array is refused, not guessed to be one
    sequence: a model's input is always a batch (wrap one sequence as tokens[None])."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise TinyseqError(f"tokens must be an integer array of shape (batch, time), got {tokens.dtype} "
                           f"{tokens.shape}: wrap a single sequence as tokens[None]")
    T = tokens.shape[1]
    if not 1 <= T <= cfg.n_ctx:
        raise TinyseqError(f"sequence length {T} is outside 1..n_ctx={cfg.n_ctx}: "
                           f"cut the sequences to at most {cfg.n_ctx} tokens")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.d_vocab):
        raise TinyseqError(f"token values must be in 0..{cfg.d_vocab - 1} (d_vocab={cfg.d_vocab}), got "
                           f"{tokens.min()}..{tokens.max()}: build the model with the process's vocabulary")
    return tokens
