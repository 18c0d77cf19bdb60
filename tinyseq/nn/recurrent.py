"""Recurrent nets in NumPy: Elman tanh RNN, GRU, LSTM; stacked layers; backpropagation through time.

# B batch, T time, V vocab (d_vocab), E embed width (d_embed), H hidden, G gates (rnn 1, gru 3, lstm 4),
# I_k input width of layer k (I_0 = E, or V for one-hot input; I_k = H for k > 0)

    x = embed.weight[tokens]   or  onehot(tokens)   or  x0      (B, T, I_0)
    for each layer k:
        xp = x @ weight_ih_l{k}.T + bias_ih_l{k}                (B, T, G*H)  every step in one matmul
        h_t = cell(xp_t, h_{t-1})    t = 0..T-1, h_{-1} = 0     (B, T, H)    hook: rnn.hook_h_l{k}
        x = h                                                                 (lstm: c is rnn.hook_c_l{k})
    logits = h @ readout.weight.T + readout.bias                (B, T, V)

Tensor names, shapes and gate orders are exactly PyTorch's, so a state dict loads into real modules by name:
    embed.weight        (V, E)      nn.Embedding(V, E).weight            (absent for one-hot input: I_0 = V)
    weight_ih_l{k}      (G*H, I_k)  nn.RNN / nn.GRU / nn.LSTM(I_0, H, n_layers, batch_first=True)
    weight_hh_l{k}      (G*H, H)      gate blocks along the first axis:
    bias_ih_l{k}        (G*H,)          gru  r, z, n     lstm  i, f, g, o
    bias_hh_l{k}        (G*H,)
    readout.weight      (V, H)      nn.Linear(H, V).weight
    readout.bias        (V,)        nn.Linear(H, V).bias
    mtp.{i}.weight      (V, H)      with n_future = N > 1, i = 2..N: extra nn.Linear(H, V) heads on the top
    mtp.{i}.bias        (V,)          hidden state predicting x_{t+i} (multi-token prediction, objectives.py)

The cells (one time step, whole batch), PyTorch's equations:
    rnn   h = tanh(xp + W_hh h_prev + b_hh)
    gru   r = sigmoid(xp_r + W_hr h_prev + b_hr)      z = sigmoid(xp_z + W_hz h_prev + b_hz)
          n = tanh(xp_n + r * (W_hn h_prev + b_hn))   h = (1 - z) * n + z * h_prev
    lstm  i, f, o = sigmoid(...)  g = tanh(...)  of xp + W_hh h_prev + b_hh, in blocks i, f, g, o
          c = f * c_prev + i * g                      h = o * tanh(c)

Each cell is a forward/backward pair of free functions; `layer_forward` / `layer_backward` run a cell over
time. The input projection of every step is one matmul outside the loop. These loops are the reference:
Recurrent(backend="numba"), the default, runs their Numba twins in recurrent_numba.py (same arguments,
same results) and the embedding / linear twins of ops_numba.py; backend="numpy" runs this file and ops.py.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.nn import ops as numpy_ops
from tinyseq.nn.params import Params, check_sizes, check_tokens

KINDS = ("rnn", "gru", "lstm")
INPUTS = ("embedding", "onehot")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}   # G: gate blocks stacked in weight_ih / weight_hh


@dataclass
class RecurrentConfig:
    """Sizes of the recurrent net. The defaults are a small model for a 3-token process (a starting point;
    the training issue tunes them). Initialisation is PyTorch's: every recurrent and readout tensor
    ~ uniform(-1/sqrt(H), 1/sqrt(H)); embed.weight ~ N(0, 1) like nn.Embedding."""
    kind: str = "gru"            # cell: "rnn" (Elman, tanh), "gru" or "lstm"
    d_vocab: int = 3             # V: number of token values (set from the process)
    n_ctx: int = 10              # training context length; the net itself runs on any length
    hidden: int = 64             # H: state width of every layer
    n_layers: int = 1            # stacked recurrent layers (PyTorch num_layers)
    input: str = "embedding"     # "embedding": learned (V, E) table; "onehot": the token's one-hot vector (I_0 = V)
    d_embed: int = 0             # E: embedding width; 0 = same as hidden (must stay 0 for one-hot input)
    n_future: int = 1            # output heads: head i predicts x_{t+i}; > 1 adds mtp.{i}.weight (--objective mtp:N)

    @property
    def input_width(self) -> int:
        """I_0: width of the first layer's input."""
        if self.input == "onehot":
            return self.d_vocab
        return self.d_embed if self.d_embed > 0 else self.hidden

    def validate(self) -> "RecurrentConfig":
        """Raise TinyseqError (one line: what is wrong, how to fix it) for sizes the model cannot be built with."""
        if self.kind not in KINDS:
            raise TinyseqError(f"unknown recurrent kind {self.kind!r}: use one of {', '.join(KINDS)}, "
                               f"e.g. --kind gru")
        if self.input not in INPUTS:
            raise TinyseqError(f"unknown recurrent input {self.input!r}: use 'embedding' (learned table) "
                               f"or 'onehot' (raw one-hot tokens), e.g. --input embedding")
        check_sizes(self, "recurrent", ("d_vocab", "n_ctx", "hidden", "n_layers"))
        e = self.d_embed
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0:
            raise TinyseqError(f"recurrent d_embed must be a non-negative integer, got {e!r}: "
                               f"pass e.g. --d-embed 32, or 0 for the same width as --hidden")
        if self.input == "onehot" and e != 0:
            raise TinyseqError(f"d_embed={e} has no effect with input='onehot' (the input width is d_vocab): "
                               f"drop --d-embed, or use --input embedding")
        return self


def param_spec(cfg: RecurrentConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in flat-buffer order; names and shapes as PyTorch state dicts."""
    V, H, GH = cfg.d_vocab, cfg.hidden, GATES[cfg.kind] * cfg.hidden
    spec = [("embed.weight", (V, cfg.input_width))] if cfg.input == "embedding" else []
    for k in range(cfg.n_layers):
        I = cfg.input_width if k == 0 else H
        spec += [(f"weight_ih_l{k}", (GH, I)), (f"weight_hh_l{k}", (GH, H)),
                 (f"bias_ih_l{k}", (GH,)), (f"bias_hh_l{k}", (GH,))]
    spec += [("readout.weight", (V, H)), ("readout.bias", (V,))]
    for i in range(2, cfg.n_future + 1):        # multi-token heads last: the trunk's init does not change
        spec += [(f"mtp.{i}.weight", (V, H)), (f"mtp.{i}.bias", (V,))]
    return spec


# ----------------------------------------------------------------------------------------------------------
# sigmoid as 0.5 * (1 + tanh(x / 2)): the same function, never overflows, keeps the dtype
def sigmoid(x):  # (...) -> (...)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ----------------------------------------------------------------------------------------------------------
# Elman cell: h = tanh(xp + h_prev @ W_hh.T + b_hh)
def rnn_cell_forward(xp, h_prev, W_hh, b_hh):  # (B, H), (B, H), (H, H), (H,) -> h (B, H)
    return np.tanh(xp + h_prev @ W_hh.T + b_hh)


def rnn_cell_backward(dW_hh, db_hh, dh, h, h_prev, W_hh):
    # (H, H) +=, (H,) +=, dh (B, H), h (B, H), h_prev (B, H), (H, H) -> dxp (B, H), dh_prev (B, H)
    # forward was: h = tanh(a), a = xp + h_prev @ W_hh.T + b_hh  ->  da = dh * (1 - h^2)
    da = dh * (1.0 - h * h)                    # (B, H)
    dW_hh += da.T @ h_prev                     # (H, H)
    db_hh += da.sum(axis=0)                    # (H,)
    return da, da @ W_hh                       # dxp (B, H), dh_prev (B, H)


# ----------------------------------------------------------------------------------------------------------
# GRU cell (PyTorch's form: r gates the *projected* previous state, W_hn h_prev + b_hn)
def gru_cell_forward(xp, h_prev, W_hh, b_hh):
    # (B, 3H), (B, H), (3H, H), (3H,) -> h (B, H), gates (B, 3H) = r, z, n, hn (B, H)
    H = h_prev.shape[1]
    hp = h_prev @ W_hh.T + b_hh                # (B, 3H) blocks r, z, n
    r = sigmoid(xp[:, :H] + hp[:, :H])
    z = sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
    hn = hp[:, 2 * H:]                         # W_hn h_prev + b_hn, kept for the backward
    n = np.tanh(xp[:, 2 * H:] + r * hn)
    h = (1.0 - z) * n + z * h_prev
    return h, np.concatenate([r, z, n], axis=1), hn


def gru_cell_backward(dW_hh, db_hh, dh, gates, hn, h_prev, W_hh):
    # (3H, H) +=, (3H,) +=, dh (B, H), gates (B, 3H), hn (B, H), h_prev (B, H), (3H, H) -> dxp (B, 3H), dh_prev (B, H)
    H = h_prev.shape[1]
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    # forward was: h = (1 - z) * n + z * h_prev  ->  dn = dh (1 - z) ; dz = dh (h_prev - n) ; dh_prev = dh z
    dn = dh * (1.0 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    # forward was: n = tanh(an), an = xp_n + r * hn  ->  dan = dn (1 - n^2) ; dr = dan hn ; dhn = dan r
    dan = dn * (1.0 - n * n)
    dr = dan * hn
    dhn = dan * r
    # forward was: r = sigmoid(ar), z = sigmoid(az)  ->  dar = dr r (1 - r) ; daz = dz z (1 - z)
    dar = dr * r * (1.0 - r)
    daz = dz * z * (1.0 - z)
    # forward was: ar = xp_r + hp_r ; az = xp_z + hp_z ; an = xp_n + r * hp_n ; hp = h_prev @ W_hh.T + b_hh
    dxp = np.concatenate([dar, daz, dan], axis=1)   # (B, 3H)
    dhp = np.concatenate([dar, daz, dhn], axis=1)   # (B, 3H)
    dW_hh += dhp.T @ h_prev
    db_hh += dhp.sum(axis=0)
    dh_prev += dhp @ W_hh                          # h_prev's second path, through the gates and hn
    return dxp, dh_prev


# ----------------------------------------------------------------------------------------------------------
# LSTM cell (gate blocks i, f, g, o as PyTorch)
def lstm_cell_forward(xp, h_prev, c_prev, W_hh, b_hh):
    # (B, 4H), (B, H), (B, H), (4H, H), (4H,) -> h (B, H), c (B, H), gates (B, 4H) = i, f, g, o
    H = h_prev.shape[1]
    a = xp + h_prev @ W_hh.T + b_hh            # (B, 4H) pre-activations
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    o = sigmoid(a[:, 3 * H:])
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    return h, c, np.concatenate([i, f, g, o], axis=1)


def lstm_cell_backward(dW_hh, db_hh, dh, dc, gates, c, c_prev, h_prev, W_hh):
    # (4H, H) +=, (4H,) +=, dh (B, H), dc (B, H), gates (B, 4H), c, c_prev, h_prev (B, H), (4H, H)
    #   -> dxp (B, 4H), dh_prev (B, H), dc_prev (B, H)
    H = h_prev.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    # forward was: h = o * tanh(c)  ->  do = dh tanh(c) ; dc += dh o (1 - tanh(c)^2)
    tc = np.tanh(c)
    do = dh * tc
    dc = dc + dh * o * (1.0 - tc * tc)
    # forward was: c = f * c_prev + i * g  ->  df = dc c_prev ; dc_prev = dc f ; di = dc g ; dg = dc i
    df = dc * c_prev
    dc_prev = dc * f
    di = dc * g
    dg = dc * i
    # forward was: i, f, o = sigmoid(a_i, a_f, a_o) ; g = tanh(a_g) ; a = xp + h_prev @ W_hh.T + b_hh
    da = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g), do * o * (1.0 - o)], axis=1)
    dW_hh += da.T @ h_prev
    db_hh += da.sum(axis=0)
    return da, da @ W_hh, dc_prev


# ----------------------------------------------------------------------------------------------------------
# one layer over time: the loops a Numba kernel can replace (same arguments, same state dict)
def layer_forward(kind, xp, W_hh, b_hh, h0=None, c0=None):  # (B, T, G*H), (G*H, H), (G*H,), (B, H) -> state
    """Run the cell over t = 0..T-1 from h0 (and c0 for lstm; default zero). Returns the layer state dict:
    h (B, T, H); gates (B, T, G*H) post-activation (gru, lstm); hn (B, T, H) = W_hn h_prev + b_hn (gru);
    c (B, T, H) (lstm); h0, c0 (B, H) the initial states."""
    B, T, _ = xp.shape
    H = W_hh.shape[1]
    h_prev = np.zeros((B, H), xp.dtype) if h0 is None else h0
    c_prev = np.zeros((B, H), xp.dtype) if c0 is None else c0
    st = dict(h0=h_prev, c0=c_prev, h=np.empty((B, T, H), xp.dtype))
    if kind != "rnn":
        st["gates"] = np.empty(xp.shape, xp.dtype)
    if kind == "gru":
        st["hn"] = np.empty((B, T, H), xp.dtype)
    if kind == "lstm":
        st["c"] = np.empty((B, T, H), xp.dtype)
    for t in range(T):
        if kind == "rnn":
            st["h"][:, t] = rnn_cell_forward(xp[:, t], h_prev, W_hh, b_hh)
        elif kind == "gru":
            st["h"][:, t], st["gates"][:, t], st["hn"][:, t] = gru_cell_forward(xp[:, t], h_prev, W_hh, b_hh)
        else:
            st["h"][:, t], st["c"][:, t], st["gates"][:, t] = lstm_cell_forward(xp[:, t], h_prev, c_prev, W_hh, b_hh)
            c_prev = st["c"][:, t]
        h_prev = st["h"][:, t]
    return st


def layer_backward(kind, dW_hh, db_hh, dh, st, W_hh, lo=0, hi=None):
    # (G*H, H) +=, (G*H,) +=, dh (B, hi-lo, H), layer state, (G*H, H) -> dxp (B, hi-lo, G*H)
    """BPTT through steps hi-1 down to lo, the forward loop read backwards. dh holds the gradient arriving
    from above (the readout or the next layer) at steps lo..hi-1. The gradient reaching the state before
    step lo is dropped: that state is the zero initial state (lo = 0) or held fixed (a truncated window)."""
    T = st["h"].shape[1]
    hi = T if hi is None else hi
    B, H = st["h0"].shape
    dxp = np.empty((B, hi - lo, W_hh.shape[0]), dh.dtype)
    dh_next = np.zeros((B, H), dh.dtype)      # dL/dh_t through h_{t+1}; zero beyond the last step
    dc_next = np.zeros((B, H), dh.dtype)      # dL/dc_t through c_{t+1} (lstm)
    for t in reversed(range(lo, hi)):
        h_prev = st["h"][:, t - 1] if t > 0 else st["h0"]
        dh_t = dh[:, t - lo] + dh_next        # h_t feeds both the layer above and h_{t+1}
        if kind == "rnn":
            dxp[:, t - lo], dh_next = rnn_cell_backward(dW_hh, db_hh, dh_t, st["h"][:, t], h_prev, W_hh)
        elif kind == "gru":
            dxp[:, t - lo], dh_next = gru_cell_backward(dW_hh, db_hh, dh_t, st["gates"][:, t], st["hn"][:, t],
                                                        h_prev, W_hh)
        else:
            c_prev = st["c"][:, t - 1] if t > 0 else st["c0"]
            dxp[:, t - lo], dh_next, dc_next = lstm_cell_backward(dW_hh, db_hh, dh_t, dc_next, st["gates"][:, t],
                                                                  st["c"][:, t], c_prev, h_prev, W_hh)
    return dxp


# ----------------------------------------------------------------------------------------------------------
BACKENDS = ("numba", "numpy")   # numba: ops_numba.py + recurrent_numba.py (fast); numpy: ops.py + the loops above


class Recurrent:
    """Stacked RNN / GRU / LSTM with a linear readout. forward -> (logits, cache); backward(dlogits, cache)
    += params.grad (full BPTT, or truncated with bptt_window) and returns dx0.

    cache (a dict): "tokens" (B, T); "x" (B, T, I_0) the first layer's input; "x0_given" bool;
    "l{k}" the state dict of layer k from `layer_forward` (h, gates, hn | c, h0, c0). Layer k > 0 reads
    cache["l{k-1}"]["h"] as its input.
    """

    def __init__(self, config: RecurrentConfig, dtype=np.float32, seed: int = 0, backend: str = "numba"):
        self.config = config.validate()
        if backend not in BACKENDS:
            raise TinyseqError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}, e.g. --backend numpy")
        self.backend = backend
        # self.ops: embedding and linear maps; self.loops: layer_forward / layer_backward, the time loops.
        # numpy: ops.py and the loops in this file (the reference); numba: their twins, same signatures.
        if backend == "numba":
            from tinyseq.nn import ops_numba, recurrent_numba   # imported here: NumPy-only use never loads Numba
            from tinyseq.threads import keep_freed_memory
            keep_freed_memory()              # reuse last step's activation memory (see threads.py)
            self.ops, self.loops = ops_numba, recurrent_numba
        else:
            self.ops, self.loops = numpy_ops, sys.modules[__name__]
        self.params = Params(param_spec(config), dtype)
        self.init_params(seed)

    @property
    def hook_names(self) -> list[str]:
        """Every activation name, in the order `activations` returns them: h of each layer, then (lstm) c."""
        L = self.config.n_layers
        names = [f"rnn.hook_h_l{k}" for k in range(L)]
        if self.config.kind == "lstm":
            names += [f"rnn.hook_c_l{k}" for k in range(L)]
        return names

    def init_params(self, seed: int = 0) -> None:
        """PyTorch's init: uniform(-1/sqrt(H), 1/sqrt(H)) for recurrent and readout tensors (nn.RNN's reset and
        nn.Linear's kaiming_uniform(a=sqrt(5)) give the same bound since the readout's fan-in is H), N(0, 1)
        for embed.weight. Drawn in float64 so float32 and float64 models from one seed hold the same numbers."""
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.config.hidden)
        for name, shape in self.params.spec:
            if name == "embed.weight":
                self.params[name][...] = rng.standard_normal(shape)
            else:
                self.params[name][...] = rng.uniform(-bound, bound, size=shape)

    def forward(self, tokens, x0=None):  # (B, T) int, (B, T, I_0) or None -> logits (B, T, V), cache
        p, cfg = self.params, self.config
        tokens = check_tokens(tokens, self.config)
        if x0 is not None:
            x = x0                                                              # (B, T, I_0)
        elif cfg.input == "embedding":
            x = self.ops.embedding_forward(p["embed.weight"], tokens)            # (B, T, E)
        else:
            x = np.eye(cfg.d_vocab, dtype=p.dtype)[tokens]                       # (B, T, V)
        cache = dict(tokens=tokens, x=x, x0_given=x0 is not None)
        for k in range(cfg.n_layers):
            # xp = x @ weight_ih.T + bias_ih, every step in one product (linear_forward takes (I, G*H))
            xp = self.ops.linear_forward(x, p[f"weight_ih_l{k}"].T, p[f"bias_ih_l{k}"])  # (B, T, G*H)
            st = self.loops.layer_forward(cfg.kind, xp, p[f"weight_hh_l{k}"], p[f"bias_hh_l{k}"])
            cache[f"l{k}"] = st
            x = st["h"]                                                         # (B, T, H)
        # nn.Linear stores (V, H) and computes h @ W.T + b; linear_forward takes (H, V), so pass the transpose
        logits = self.ops.linear_forward(x, p["readout.weight"].T, p["readout.bias"])  # (B, T, V)
        return logits, cache

    def mtp_logits(self, cache):  # cache of forward -> [(B, T, V)] of heads i = 2..n_future
        """The multi-token heads: logits_i = h_top @ mtp.{i}.weight.T + mtp.{i}.bias predicts x_{t+i}."""
        p, top = self.params, cache[f"l{self.config.n_layers - 1}"]["h"]            # (B, T, H)
        return [self.ops.linear_forward(top, p[f"mtp.{i}.weight"].T, p[f"mtp.{i}.bias"])
                for i in range(2, self.config.n_future + 1)]

    def backward(self, dlogits, cache, bptt_window=None, dmtp=None):  # (B, T, V), cache, int or None -> dx0 (B, T, I_0)
        """Accumulate parameter gradients into params.grad; return the gradient of the first layer's input.

        bptt_window=None: full BPTT. bptt_window=M: the loss at step t is backpropagated through steps
        t-M+1..t only; every hidden (and cell) state before t-M+1, in every layer, is held fixed. M=1 lets no
        gradient through the recurrence; M >= T is full BPTT. Cost: T*M cell backwards instead of T.
        Myopia horizon m (--myopia, objectives.py) is bptt_window = m + 1: the loss at t reaches t-m..t.
        dmtp: gradients of mtp_logits' heads 2..n_future; they read the same top h_t as the readout.
        """
        p, cfg = self.params, self.config
        L = cfg.n_layers
        T = dlogits.shape[1]
        top = cache[f"l{L - 1}"]["h"]                                            # (B, T, H)
        # forward was: logits = h @ readout.weight.T + readout.bias
        dh = self.ops.linear_backward(p.grads["readout.weight"].T, p.grads["readout.bias"], dlogits,
                                      top, p["readout.weight"].T)                # (B, T, H)
        # dmtp: gradients of mtp_logits' heads 2..n_future (None: none); forward was logits_i = h @ W_i.T + b_i
        for i, d in enumerate(dmtp or [], start=2):
            if d is not None:
                dh += self.ops.linear_backward(p.grads[f"mtp.{i}.weight"].T, p.grads[f"mtp.{i}.bias"], d,
                                               top, p[f"mtp.{i}.weight"].T)
        if bptt_window is None or bptt_window >= T:
            dx = self._bptt(dh, cache, 0, T)                                     # (B, T, I_0)
        else:
            M = int(bptt_window)
            if M < 1:
                raise TinyseqError(f"bptt_window must be a positive number of steps or None, got {bptt_window!r}")
            dx = np.zeros(cache["x"].shape, dh.dtype)
            for t in range(T):                 # one window per loss position: only dh[:, t] enters it
                lo = max(0, t - M + 1)
                dh_t = np.zeros((dh.shape[0], t + 1 - lo, dh.shape[2]), dh.dtype)
                dh_t[:, -1] = dh[:, t]
                dx[:, lo:t + 1] += self._bptt(dh_t, cache, lo, t + 1)
        if not cache["x0_given"] and cfg.input == "embedding":
            # forward was: x = embed.weight[tokens]  (with x0 given, the embedding was never read)
            self.ops.embedding_backward(p.grads["embed.weight"], dx, cache["tokens"])
        return dx

    def _bptt(self, dh, cache, lo, hi):  # (B, hi-lo, H) from the readout -> dx (B, hi-lo, I_0)
        """Backprop steps lo..hi-1 through every layer, top to bottom (forward's layer loop reversed)."""
        p, cfg = self.params, self.config
        for k in reversed(range(cfg.n_layers)):
            st = cache[f"l{k}"]
            x = (cache["x"] if k == 0 else cache[f"l{k - 1}"]["h"])[:, lo:hi]       # (B, hi-lo, I_k)
            dxp = self.loops.layer_backward(cfg.kind, p.grads[f"weight_hh_l{k}"], p.grads[f"bias_hh_l{k}"], dh,
                                            st, p[f"weight_hh_l{k}"], lo, hi)      # (B, hi-lo, G*H)
            # forward was: xp = x @ weight_ih.T + bias_ih  (all steps in one product, so its backward is one too)
            dh = self.ops.linear_backward(p.grads[f"weight_ih_l{k}"].T, p.grads[f"bias_ih_l{k}"], dxp, x,
                                          p[f"weight_ih_l{k}"].T)                  # (B, hi-lo, I_k)
        return dh

    def activations(self, tokens) -> dict[str, np.ndarray]:
        """Hook name -> (B, T, H), in layer order: rnn.hook_h_l0, rnn.hook_h_l1, ...; for an LSTM the cell
        states rnn.hook_c_l{k} follow all the h hooks (`is_cell_state(name)` tells a probe to skip them)."""
        _, cache = self.forward(tokens)
        acts = {f"rnn.hook_h_l{k}": cache[f"l{k}"]["h"] for k in range(self.config.n_layers)}
        if self.config.kind == "lstm":
            acts.update({f"rnn.hook_c_l{k}": cache[f"l{k}"]["c"] for k in range(self.config.n_layers)})
        return acts

    def logits(self, tokens) -> np.ndarray:  # (B, T) -> (B, T, V)
        return self.forward(tokens)[0]

    def continuation_logits(self, prefix, depth):  # (B, t) int, int -> [(B, V, V), (B, V^2, V), ..., (B, V^depth, V)]
        """Logits after prefix + c for every continuation c of 1..depth tokens (level j: the V^j continuations
        of length j in lexicographic order), as logits(concat(prefix, c))[:, -1]: the prefix runs once, then each
        node of the continuation tree is one cell step from its parent's state (the state is all a recurrent
        net carries), so the cost is B (V + ... + V^depth) steps instead of B V^depth (t + depth)."""
        p, cfg, V = self.params, self.config, self.config.d_vocab
        prefix = check_tokens(prefix, cfg)
        if prefix.shape[1] + depth > cfg.n_ctx:
            raise TinyseqError(f"a prefix of {prefix.shape[1]} tokens plus {depth} more is longer than the context "
                               f"{cfg.n_ctx}")
        _, cache = self.forward(prefix)
        state = [(cache[f"l{k}"]["h"][:, -1], cache[f"l{k}"]["c"][:, -1] if cfg.kind == "lstm" else None)
                 for k in range(cfg.n_layers)]                              # per layer (B*n, H) h and c (lstm)
        B, levels = len(prefix), []
        for j in range(1, depth + 1):
            tokens = np.tile(np.arange(V), B * V ** (j - 1))[:, None]           # (B*V^j, 1) each node's last token
            x = (self.ops.embedding_forward(p["embed.weight"], tokens) if cfg.input == "embedding"
                 else np.eye(V, dtype=p.dtype)[tokens])                         # (B*V^j, 1, I)
            for k, (h, c) in enumerate(state):
                xp = self.ops.linear_forward(x, p[f"weight_ih_l{k}"].T, p[f"bias_ih_l{k}"])
                st = self.loops.layer_forward(cfg.kind, xp, p[f"weight_hh_l{k}"], p[f"bias_hh_l{k}"],
                                              np.repeat(h, V, axis=0), None if c is None else np.repeat(c, V, axis=0))
                state[k] = (st["h"][:, 0], st["c"][:, 0] if cfg.kind == "lstm" else None)
                x = st["h"]                                                     # (B*V^j, 1, H)
            logits = self.ops.linear_forward(x[:, 0], p["readout.weight"].T, p["readout.bias"])
            levels.append(logits.reshape(B, V ** j, V))
        return levels


def is_cell_state(hook_name: str) -> bool:
    """True for an LSTM cell-state hook (rnn.hook_c_l{k}): memory, not the state the readout sees."""
    return hook_name.startswith("rnn.hook_c_")
