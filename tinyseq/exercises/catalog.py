"""The exercises: which forward/backward pair of tinyseq each one is, and the tiny float64 problem it is checked on.

Every problem is built from tinyseq's own forward (ops.py, recurrent.py): `loss()` is that forward dotted
with a random upstream gradient (as gradcheck.py does), `run(backward)` calls the learner's backward the way
the models call the real one. Gradient buffers the backward accumulates into (`dw += ...`) start random, not
zero, and the check reads what was added: a backward that rebinds `dw = ...` or overwrites `dw[...] = ...`
fails.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tinyseq.nn import ops, recurrent

OPS_LETTERS = "Shape letters: B batch, T time, C feature width, V vocab, NH heads, HS head size, F MLP width."
RNN_LETTERS = "Shape letters: B batch, H hidden width; gate blocks are stacked along the 3H / 4H axis."
ACCUMULATE = ("Convention (from llm.c): the backward adds (+=) into the parameter-gradient buffers it is given\n"
              "and returns the gradient(s) of its input(s).")


@dataclass
class Problem:
    """One float64 instance of an exercise. `inputs` are the tensors whose gradients are checked (the finite
    differences perturb them in place); `loss()` -> (scalar, abs-sum of its terms, for the rounding floor);
    `run(backward)` -> (what the backward returned, {input name: amount added to its gradient buffer});
    `returns` names the input each returned array is the gradient of."""
    inputs: dict
    loss: Callable[[], tuple]
    run: Callable[[Callable], tuple]
    returns: tuple


@dataclass(frozen=True)
class Exercise:
    name: str
    about: str            # one line, for `tinyseq exercise list`
    module: object        # the tinyseq module holding the forward and the reference backward
    given: tuple          # the forward, copied whole into the learner's file with every helper it uses
    to_write: tuple       # functions the learner writes (bodies blanked); the last one is called by the check
    task: str             # what the file's docstring tells the learner beyond the common text
    cases: tuple          # (label, build(rng) -> Problem); label "" when there is one case

    @property
    def backward(self) -> str:
        return self.to_write[-1]

    @property
    def source(self) -> str:
        """The file the exercise is cut from, as a path in the repository: tinyseq/nn/ops.py."""
        return self.module.__name__.replace(".", "/") + ".py"

    @property
    def mirrors(self) -> str:
        """'tinyseq/nn/ops.py: layernorm_backward', plus the helpers to write when there are any."""
        helpers = [n.replace("_backward", "") for n in self.to_write[:-1]]
        return f"{self.source}: {self.backward}" + (f" (+ {', '.join(helpers)})" if helpers else "")


def _dotted(outs_and_douts):  # [(array, upstream gradient)] -> (sum of out * dout, sum of |out * dout|)
    terms = [out * d for out, d in outs_and_douts]
    return float(sum(t.sum() for t in terms)), float(sum(np.abs(t).sum() for t in terms))


def _buffers(rng, **like):  # name -> gradient buffer starting at random values (so `dw = ...` is caught)
    return {name: rng.standard_normal(a.shape) for name, a in like.items()}


def _added(buffers, start):  # what the backward added into each buffer
    return {name: buffers[name] - start[name] for name in buffers}


def _accumulating_call(rng, backward, like, *args):
    """backward(*buffers, *args) with random-start buffers shaped like `like` -> (returned, {name: added})."""
    bufs = _buffers(rng, **like)
    start = {n: b.copy() for n, b in bufs.items()}
    returned = backward(*bufs.values(), *args)
    return returned, _added(bufs, start)


# ----------------------------------------------------------------------------------------------------------
def cross_entropy_problem(scale):
    def build(rng):  # logits (B, T, V), targets (B, T)
        logits = rng.standard_normal((2, 3, 5))
        targets = rng.integers(0, 5, size=(2, 3))

        def loss():  # scalar, so its upstream gradient is 1; scale=s (not None) means s * sum_n, not mean_n
            value = float(ops.cross_entropy_forward(logits, targets)[0])
            value *= 1.0 if scale is None else scale * targets.size
            return value, abs(value)

        def run(backward):
            _, probs = ops.cross_entropy_forward(logits, targets)
            return backward(probs.copy(), targets.copy(), scale), {}
        return Problem(dict(logits=logits), loss, run, ("logits",))
    return build


def layernorm_problem(rng):  # x (B, T, C), w (C,), b (C,)
    x = rng.standard_normal((2, 3, 4))
    w = 1.0 + 0.5 * rng.standard_normal(4)
    b = rng.standard_normal(4)
    dout = rng.standard_normal(x.shape)

    def loss():
        return _dotted([(ops.layernorm_forward(x, w, b)[0], dout)])

    def run(backward):
        _, mean, rstd = ops.layernorm_forward(x, w, b)
        return _accumulating_call(rng, backward, dict(w=w, b=b), dout.copy(), x.copy(), w.copy(), mean, rstd)
    return Problem(dict(x=x, w=w, b=b), loss, run, ("x",))


def attention_split_forward(q, k, v, k_far, v_far, window):  # (B, NH, T, HS) x5, int -> out (B, NH, T, HS)
    """attention_forward, except that query t reads the key and value of a position s more than `window`
    steps back (t - s > window) from k_far, v_far, copies of k, v. The gradients of those copies are what
    attention_backward(..., window) returns as dk_far, dv_far: this is the forward that defines them."""
    T, HS = q.shape[-2:]
    far = np.arange(T)[:, None] - np.arange(T)[None, :] > window                   # (T, T)
    scores = np.where(far, q @ k_far.swapaxes(-1, -2), q @ k.swapaxes(-1, -2)) / math.sqrt(HS)
    scores[..., np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf             # causal mask
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)                                        # (B, NH, T, T)
    return (att * ~far) @ v + (att * far) @ v_far


def attention_problem(window):
    def build(rng):  # q, k, v (B, NH, T, HS); with a window, k_far, v_far too (copies of k, v)
        q, k, v = (rng.standard_normal((1, 2, 4, 3)) for _ in range(3))
        k_far, v_far = k.copy(), v.copy()
        dout = rng.standard_normal(q.shape)

        def loss():
            out = (ops.attention_forward(q, k, v)[0] if window is None else
                   attention_split_forward(q, k, v, k_far, v_far, window))
            return _dotted([(out, dout)])

        def run(backward):
            _, att = ops.attention_forward(q, k, v)
            return backward(dout.copy(), q.copy(), k.copy(), v.copy(), att, window), {}
        if window is None:
            return Problem(dict(q=q, k=k, v=v), loss, run, ("q", "k", "v"))
        return Problem(dict(q=q, k=k, v=v, k_far=k_far, v_far=v_far), loss, run, ("q", "k", "v", "k_far", "v_far"))
    return build


def mlp_problem(act):
    def build(rng):  # x (B, T, C), W (C, F), b (F,)
        x = rng.standard_normal((2, 3, 4))
        W = rng.standard_normal((4, 5))
        b = rng.standard_normal(5)
        dpost = rng.standard_normal((2, 3, 5))

        def loss():
            return _dotted([(ops.linear_act_forward(x, W, b, act)[1], dpost)])

        def run(backward):
            pre, _ = ops.linear_act_forward(x, W, b, act)
            return _accumulating_call(rng, backward, dict(W=W, b=b), dpost.copy(), x.copy(), W.copy(), pre, act)
        return Problem(dict(x=x, W=W, b=b), loss, run, ("x",))
    return build


def rnn_problem(rng):  # xp (B, H), h_prev (B, H), W_hh (H, H), b_hh (H,)
    xp, h_prev = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    W_hh, b_hh = rng.standard_normal((3, 3)), rng.standard_normal(3)
    dh = rng.standard_normal((2, 3))

    def loss():
        return _dotted([(recurrent.rnn_cell_forward(xp, h_prev, W_hh, b_hh), dh)])

    def run(backward):
        h = recurrent.rnn_cell_forward(xp, h_prev, W_hh, b_hh)
        return _accumulating_call(rng, backward, dict(W_hh=W_hh, b_hh=b_hh), dh.copy(), h, h_prev.copy(),
                                  W_hh.copy())
    return Problem(dict(xp=xp, h_prev=h_prev, W_hh=W_hh, b_hh=b_hh), loss, run, ("xp", "h_prev"))


def gru_problem(rng):  # xp (B, 3H), h_prev (B, H), W_hh (3H, H), b_hh (3H,)
    B, H = 2, 3
    xp, h_prev = rng.standard_normal((B, 3 * H)), rng.standard_normal((B, H))
    W_hh, b_hh = rng.standard_normal((3 * H, H)), rng.standard_normal(3 * H)
    dh = rng.standard_normal((B, H))

    def loss():
        return _dotted([(recurrent.gru_cell_forward(xp, h_prev, W_hh, b_hh)[0], dh)])

    def run(backward):
        _, gates, hn = recurrent.gru_cell_forward(xp, h_prev, W_hh, b_hh)
        return _accumulating_call(rng, backward, dict(W_hh=W_hh, b_hh=b_hh), dh.copy(), gates, hn,
                                  h_prev.copy(), W_hh.copy())
    return Problem(dict(xp=xp, h_prev=h_prev, W_hh=W_hh, b_hh=b_hh), loss, run, ("xp", "h_prev"))


def lstm_problem(rng):  # xp (B, 4H), h_prev, c_prev (B, H), W_hh (4H, H), b_hh (4H,)
    B, H = 2, 3
    xp, h_prev, c_prev = rng.standard_normal((B, 4 * H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    W_hh, b_hh = rng.standard_normal((4 * H, H)), rng.standard_normal(4 * H)
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))   # upstream: h and c both flow on

    def loss():
        h, c, _ = recurrent.lstm_cell_forward(xp, h_prev, c_prev, W_hh, b_hh)
        return _dotted([(h, dh), (c, dc)])

    def run(backward):
        _, c, gates = recurrent.lstm_cell_forward(xp, h_prev, c_prev, W_hh, b_hh)
        return _accumulating_call(rng, backward, dict(W_hh=W_hh, b_hh=b_hh), dh.copy(), dc.copy(), gates, c,
                                  c_prev.copy(), h_prev.copy(), W_hh.copy())
    return Problem(dict(xp=xp, h_prev=h_prev, c_prev=c_prev, W_hh=W_hh, b_hh=b_hh), loss, run,
                   ("xp", "h_prev", "c_prev"))


# ----------------------------------------------------------------------------------------------------------
EXERCISES = {ex.name: ex for ex in [
    Exercise("cross_entropy", "softmax cross-entropy, mean over tokens: dlogits", ops,
             ("cross_entropy_forward",), ("cross_entropy_backward",),
             f"{OPS_LETTERS}\nThe loss is a scalar, so its upstream gradient is 1. The check calls\n"
             "cross_entropy_backward(probs, targets, None) (the mean's 1/N) and with scale=0.5 (dlogits scaled\n"
             "by 0.5 instead: the gradient of 0.5 * the sum over tokens).",
             (("scale=None", cross_entropy_problem(None)), ("scale=0.5", cross_entropy_problem(0.5)))),
    Exercise("layernorm", "layer norm over the last axis: dx, dw, db", ops,
             ("layernorm_forward",), ("layernorm_backward",), f"{OPS_LETTERS}\n{ACCUMULATE}",
             (("", layernorm_problem),)),
    Exercise("attention", "causal softmax attention of heads: dq, dk, dv", ops,
             ("attention_forward",), ("attention_backward",),
             f"{OPS_LETTERS}\nThe check calls attention_backward with window=None (dq, dk, dv) and with\n"
             "window=1 (dq, dk, dv, dk_far, dv_far). For the window it differentiates a forward in which query t\n"
             "reads keys and values more than 1 step back from copies k_far, v_far: their gradients are\n"
             "dk_far, dv_far. Write window=None first: while the window branch still raises\n"
             "NotImplementedError, the check shows the window=None gradients and says the rest is not written.",
             (("window=None", attention_problem(None)), ("window=1", attention_problem(1)))),
    Exercise("mlp", "linear + ReLU or GELU (MLP first half): dx, dW, db", ops,
             ("linear_act_forward",),
             ("linear_backward", "relu_backward", "gelu_backward", "linear_act_backward"),
             f"{OPS_LETTERS}\n{ACCUMULATE}\nWrite the three small backwards, then linear_act_backward from them;\n"
             "the check runs linear_act_backward with act='relu' and with act='gelu'.",
             (("act=relu", mlp_problem("relu")), ("act=gelu", mlp_problem("gelu")))),
    Exercise("rnn_cell", "one Elman tanh RNN step: dxp, dh_prev, dW_hh, db_hh", recurrent,
             ("rnn_cell_forward",), ("rnn_cell_backward",), f"{RNN_LETTERS}\n{ACCUMULATE}",
             (("", rnn_problem),)),
    Exercise("gru_cell", "one GRU step (gates r, z, n): dxp, dh_prev, dW_hh, db_hh", recurrent,
             ("gru_cell_forward",), ("gru_cell_backward",), f"{RNN_LETTERS}\n{ACCUMULATE}",
             (("", gru_problem),)),
    Exercise("lstm_cell", "one LSTM step (gates i, f, g, o): dxp, dh_prev, dc_prev, dW_hh, db_hh", recurrent,
             ("lstm_cell_forward",), ("lstm_cell_backward",),
             f"{RNN_LETTERS}\n{ACCUMULATE}\nBoth h and c flow on to the next step, so the upstream gradient\n"
             "arrives as dh and dc; the check gives both random values.",
             (("", lstm_problem),)),
]}
