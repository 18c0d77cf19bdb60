# B batch, T time (T <= n_ctx), C d_model, V vocab (d_vocab), NH heads, HS head size (d_head), F d_mlp
"""A pre-LayerNorm causal transformer in NumPy, with a hand-written backward that is the forward in reverse.

    x0 = W_E[tokens] + W_pos[:T]                      hook: blocks.0.hook_resid_pre
    for each block l:
        x = x + attn(ln1(x))                          hook: blocks.{l}.hook_resid_mid
        x = x + mlp(ln2(x))                           hook: blocks.{l}.hook_resid_post
    logits = ln_final(x) @ W_U + b_U                  hook: ln_final.hook_normalized
    mtp logits_i = ln_final(x) @ mtp.{i}.W_U + mtp.{i}.b_U   i = 2..n_future: extra heads predicting x_{t+i}

Parameter and hook names and shapes are those of a TransformerLens HookedTransformer, so a trained state dict
loads there by name (with act_fn "gelu_new" if ours used "gelu", see TransformerConfig.act_fn).
The ops come from `self.ops`: the Numba twins of `ops_numba.py` (backend="numba", the default) or the plain NumPy
reference `ops.py` (backend="numpy"); both have the same signatures, so the model code is the same for both.
A few steps of a block are fused ops (`linear_residual_forward`, `mlp_forward/backward`, `layernorm_backward_add`):
a matmul and the elementwise work around it (bias, nonlinearity, residual add) in one pass. ops_numba.py has them
as Numba kernels; the end of ops.py has their references, each composed of the plain ops above it.

Two layout choices make each block a few large matrix products instead of many small ones (T = 10 is short):
  - q, k and v of all heads come from one matmul, h @ W_qkv with W_qkv (C, 3*NH*HS) gathered from the
    TransformerLens tensors W_Q, W_K, W_V (NH, C, HS) once per forward; its gradient is scattered back.
  - the heads' outputs z are merged to (B, T, NH*HS) and projected by W_O viewed as (NH*HS, C): one matmul.

Two training variants change only what backward computes (tinyseq/objectives.py assembles the losses):
  - multi-token prediction: with n_future = N > 1 the model has N - 1 extra unembeddings `mtp.{i}.W_U` (C, V),
    `mtp.{i}.b_U` (V,), i = 2..N, reading the same final residual stream (after ln_final) as W_U; head i
    predicts x_{t+i}. They are not TransformerLens tensors (a TransformerLens load ignores / rejects them);
    `forward` and `logits` return head 1 only, `mtp_logits(cache)` the others, and backward takes their
    gradients as `dmtp`.
  - myopia (backward(..., myopia=M)): see `_block_backward`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tinyseq.errors import TinyseqError
from tinyseq.nn import ops as numpy_ops
from tinyseq.nn.params import Params, check_sizes, check_tokens

ACT_FNS = ("relu", "gelu", "gelu_new")      # "gelu" is the tanh form, i.e. TransformerLens's "gelu_new"
NORMALIZATION_TYPES = ("LN", None)
BACKENDS = ("numba", "numpy")               # numba: ops_numba.py (fast); numpy: ops.py (the reference)


@dataclass
class TransformerConfig:
    """Sizes of the transformer; field names as TransformerLens's HookedTransformerConfig.

    The defaults are a small, fast model for a 3-token process (a starting point; the training issue tunes
    them). `paper_config(name)` gives the models of the belief-state-geometry paper.
    """
    d_vocab: int = 3                 # V: number of token values (set from the process)
    n_ctx: int = 10                  # longest context; the positional embedding has n_ctx rows
    n_layers: int = 2                # transformer blocks
    d_model: int = 32                # C: residual stream width
    n_heads: int = 2                 # NH: attention heads per block
    d_head: int = 16                 # HS: size of each head (n_heads * d_head need not equal d_model)
    d_mlp: int = 128                 # F: hidden width of each MLP (4 * d_model, as GPT-2)
    act_fn: str = "relu"             # "relu", or "gelu": tanh approximation (= TransformerLens "gelu_new")
    normalization_type: str | None = "LN"   # "LN": LayerNorm before attn, mlp and unembed; None: no LayerNorm
    initializer_range: float = 0.02  # std of the normal init of every weight matrix (GPT-2's 0.02);
    #                                  biases start at 0, LayerNorm gains at 1.
    n_future: int = 1                # output heads: head i predicts x_{t+i}; > 1 adds mtp.{i}.W_U (--objective mtp:N)

    def __post_init__(self):
        # from a command line the "no LayerNorm" choice arrives as a string
        if isinstance(self.normalization_type, str) and self.normalization_type.lower() in ("none", ""):
            self.normalization_type = None

    def validate(self) -> "TransformerConfig":
        """Raise TinyseqError (one line: what is wrong, how to fix it) for sizes the model cannot be built with."""
        check_sizes(self, "transformer", ("d_vocab", "n_ctx", "n_layers", "d_model", "n_heads", "d_head", "d_mlp"))
        if self.act_fn not in ACT_FNS:
            raise TinyseqError(f"unknown act_fn {self.act_fn!r}: use one of {', '.join(ACT_FNS)}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise TinyseqError(f"unknown normalization_type {self.normalization_type!r}: "
                               f"use 'LN' (LayerNorm) or None (no normalisation)")
        r = self.initializer_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise TinyseqError(f"initializer_range must be a positive number, got {r!r}: e.g. 0.02")
        return self


def paper_config(process_name: str) -> TransformerConfig:
    """The transformer trained on `process_name` in Shai et al. 2024, "Transformers represent belief state
    geometry in their residual stream": "mess3" or "rrxor" (parameters after ':' are ignored)."""
    name = process_name.split(":")[0].strip().lower()
    if name == "mess3":
        return TransformerConfig(d_vocab=3, n_ctx=10, n_layers=4, d_model=64, n_heads=1, d_head=8, d_mlp=256,
                                 act_fn="relu", normalization_type="LN")
    if name == "rrxor":
        return TransformerConfig(d_vocab=2, n_ctx=10, n_layers=4, d_model=128, n_heads=4, d_head=16, d_mlp=512,
                                 act_fn="relu", normalization_type="LN")
    raise TinyseqError(f"no published transformer for process {process_name!r}: use 'mess3' or 'rrxor', "
                       f"or build a TransformerConfig yourself")


def param_spec(cfg: TransformerConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in flat-buffer order; names and shapes as a TransformerLens state dict."""
    V, C, NH, HS, F = cfg.d_vocab, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    ln = cfg.normalization_type == "LN"
    spec = [("embed.W_E", (V, C)), ("pos_embed.W_pos", (cfg.n_ctx, C))]
    for l in range(cfg.n_layers):
        p = f"blocks.{l}"
        if ln:
            spec += [(f"{p}.ln1.w", (C,)), (f"{p}.ln1.b", (C,))]
        spec += [(f"{p}.attn.W_Q", (NH, C, HS)), (f"{p}.attn.W_K", (NH, C, HS)), (f"{p}.attn.W_V", (NH, C, HS)),
                 (f"{p}.attn.W_O", (NH, HS, C)),
                 (f"{p}.attn.b_Q", (NH, HS)), (f"{p}.attn.b_K", (NH, HS)), (f"{p}.attn.b_V", (NH, HS)),
                 (f"{p}.attn.b_O", (C,))]
        if ln:
            spec += [(f"{p}.ln2.w", (C,)), (f"{p}.ln2.b", (C,))]
        spec += [(f"{p}.mlp.W_in", (C, F)), (f"{p}.mlp.b_in", (F,)),
                 (f"{p}.mlp.W_out", (F, C)), (f"{p}.mlp.b_out", (C,))]
    if ln:
        spec += [("ln_final.w", (C,)), ("ln_final.b", (C,))]
    spec += [("unembed.W_U", (C, V)), ("unembed.b_U", (V,))]
    for i in range(2, cfg.n_future + 1):        # multi-token heads last: the trunk's init does not change
        spec += [(f"mtp.{i}.W_U", (C, V)), (f"mtp.{i}.b_U", (V,))]
    return spec


class Transformer:
    """Pre-LN causal transformer. forward -> (logits, cache); backward(dlogits, cache) += params.grad.

    The cache is a dict of arrays keyed by TransformerLens hook names (plus `.mean`/`.rstd` for LayerNorm);
    q, k, v, z are stored as (B, NH, T, HS), not TransformerLens's (B, T, NH, HS). A relu model's cache has no
    `mlp.hook_pre`: its backward reads relu's derivative from `mlp.hook_post` (ops.mlp_forward says why).
    """

    def __init__(self, config: TransformerConfig, dtype=np.float32, seed: int = 0, backend: str = "numba"):
        self.config = config.validate()
        if backend not in BACKENDS:
            raise TinyseqError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        self.backend = backend
        if backend == "numba":
            from tinyseq.nn import ops_numba   # imported here: NumPy-only use never loads Numba
            from tinyseq.threads import keep_freed_memory
            keep_freed_memory()              # reuse last step's activation memory (see threads.py)
            self.ops = ops_numba
        else:
            self.ops = numpy_ops
        self.params = Params(param_spec(config), dtype)
        self.init_params(seed)

    def init_params(self, seed: int = 0) -> None:
        """Weights ~ N(0, initializer_range), biases 0, LayerNorm gains 1; drawn in float64 so that a float32
        and a float64 model from the same seed hold the same numbers (up to rounding)."""
        rng = np.random.default_rng(seed)
        for name, shape in self.params.spec:
            leaf = name.rsplit(".", 1)[1]
            if leaf.startswith("W_"):
                self.params[name][...] = rng.standard_normal(shape) * self.config.initializer_range
            elif leaf == "w":                        # LayerNorm gain
                self.params[name][...] = 1.0
            else:                                    # every bias, LayerNorm shift included
                self.params[name][...] = 0.0

    # ------------------------------------------------------------------------------------------------------
    # LayerNorm if the config has it, else the identity (then the ln tensors do not exist)
    def _norm_forward(self, name, x, cache):  # (B, T, C) -> (B, T, C)
        if self.config.normalization_type is None:
            cache[f"{name}.hook_normalized"] = x
            return x
        P = self.params
        out, mean, rstd = self.ops.layernorm_forward(x, P[f"{name}.w"], P[f"{name}.b"])
        cache[f"{name}.hook_normalized"], cache[f"{name}.mean"], cache[f"{name}.rstd"] = out, mean, rstd
        return out

    def _norm_backward(self, name, dout, x, cache):  # (B, T, C), (B, T, C) -> dx (B, T, C)
        if self.config.normalization_type is None:
            return dout
        P, G = self.params, self.params.grads
        return self.ops.layernorm_backward(G[f"{name}.w"], G[f"{name}.b"], dout, x, P[f"{name}.w"],
                                           cache[f"{name}.mean"], cache[f"{name}.rstd"])

    def _norm_backward_add(self, name, dresid, dout, x, cache):  # (B, T, C) +=, (B, T, C), (B, T, C)
        """forward was: x = x + f(norm(x))  ->  the residual's gradient dresid += norm's backward of dout."""
        if self.config.normalization_type is None:
            dresid += dout
            return
        P, G = self.params, self.params.grads
        self.ops.layernorm_backward_add(dresid, G[f"{name}.w"], G[f"{name}.b"], dout, x, P[f"{name}.w"],
                                          cache[f"{name}.mean"], cache[f"{name}.rstd"])

    @property
    def _act(self):  # the MLP nonlinearity as the fused ops name it: "relu" or "gelu" (the tanh form)
        return "relu" if self.config.act_fn == "relu" else "gelu"

    # ------------------------------------------------------------------------------------------------------
    def forward(self, tokens, x0=None):  # (B, T) int [, (B, T, C)] -> logits (B, T, V), cache
        """Logits and the cache backward needs. x0, if given, replaces W_E[tokens] + W_pos[:T] (then the
        embedding tables get no gradient)."""
        ops, P = self.ops, self.params
        tokens = check_tokens(tokens, self.config)
        cache = {"tokens": tokens, "x0_given": x0 is not None}
        if x0 is None:
            x = ops.encoder_forward(P["embed.W_E"], P["pos_embed.W_pos"], tokens)      # (B, T, C)
        else:
            x = np.asarray(x0, dtype=P.dtype)
        for l in range(self.config.n_layers):
            x = self._block_forward(l, x, cache)                                      # (B, T, C)
        xf = self._norm_forward("ln_final", x, cache)                                 # (B, T, C)
        logits = ops.linear_forward(xf, P["unembed.W_U"], P["unembed.b_U"])           # (B, T, V)
        return logits, cache

    def mtp_logits(self, cache):  # cache of forward -> [(B, T, V)] of heads i = 2..n_future
        """The multi-token heads: logits_i = ln_final(x) @ mtp.{i}.W_U + mtp.{i}.b_U predicts x_{t+i}."""
        xf = cache["ln_final.hook_normalized"]                                        # (B, T, C)
        return [self.ops.linear_forward(xf, self.params[f"mtp.{i}.W_U"], self.params[f"mtp.{i}.b_U"])
                for i in range(2, self.config.n_future + 1)]

    def backward(self, dlogits, cache, myopia=None, dmtp=None):
        # (B, T, V), cache, int or None, [(B, T, V) or None] -> dx0 (B, T, C); accumulates into params.grad
        """dlogits: gradient of head 1 (forward's logits). dmtp: gradients of mtp_logits' heads 2..n_future
        (None, or None for a head: no gradient). myopia=M: myopic training (see _block_backward); None: ordinary."""
        ops, P, G = self.ops, self.params, self.params.grads
        dlogits = np.asarray(dlogits, dtype=P.dtype)
        xf = cache["ln_final.hook_normalized"]
        dxf = ops.linear_backward(G["unembed.W_U"], G["unembed.b_U"], dlogits, xf, P["unembed.W_U"])
        # forward was: logits_i = xf @ mtp.{i}.W_U + mtp.{i}.b_U  ->  every head adds its share to dxf
        for i, d in enumerate(dmtp or [], start=2):
            if d is not None:
                dxf += ops.linear_backward(G[f"mtp.{i}.W_U"], G[f"mtp.{i}.b_U"], np.asarray(d, dtype=P.dtype),
                                           xf, P[f"mtp.{i}.W_U"])
        x_last = cache[f"blocks.{self.config.n_layers - 1}.hook_resid_post"]
        dx = self._norm_backward("ln_final", dxf, x_last, cache)
        for l in reversed(range(self.config.n_layers)):
            dx = self._block_backward(l, dx, cache, myopia)
        if not cache["x0_given"]:
            ops.encoder_backward(G["embed.W_E"], G["pos_embed.W_pos"], dx, cache["tokens"])
        return dx

    # ------------------------------------------------------------------------------------------------------
    def _block_forward(self, l, x, cache):  # (B, T, C) -> (B, T, C)
        ops, P, p = self.ops, self.params, f"blocks.{l}"
        cache[f"{p}.hook_resid_pre"] = x
        # attention: x = x + attn(ln1(x))
        h = self._norm_forward(f"{p}.ln1", x, cache)                                  # (B, T, C)
        W_qkv, b_qkv = self._qkv_gather(l)                                 # (C, 3*NH*HS), (3*NH*HS,)
        qkv = ops.linear_forward(h, W_qkv, b_qkv)                          # (B, T, 3*NH*HS) all heads at once
        q, k, v = split_qkv(qkv, self.config.n_heads)                      # 3 views (B, NH, T, HS)
        z, att = ops.attention_forward(q, k, v)                    # (B, NH, T, HS), (B, NH, T, T)
        zm = merge_heads(z)                                                           # (B, T, NH*HS)
        x = ops.linear_residual_forward(zm, self._W_O(l), P[f"{p}.attn.b_O"], x)  # x + zm @ W_O + b_O (B, T, C)
        cache[f"{p}.attn.W_qkv"] = W_qkv
        cache[f"{p}.attn.hook_q"], cache[f"{p}.attn.hook_k"], cache[f"{p}.attn.hook_v"] = q, k, v
        cache[f"{p}.attn.hook_pattern"], cache[f"{p}.attn.hook_z"] = att, z
        cache[f"{p}.attn.z_merged"] = zm
        cache[f"{p}.hook_resid_mid"] = x
        # MLP: x = x + W_out act(W_in ln2(x))
        h = self._norm_forward(f"{p}.ln2", x, cache)                                  # (B, T, C)
        pre, post, x = ops.mlp_forward(h, *self._mlp(l), x, self._act)   # (B, T, F) or None, (B, T, F), (B, T, C)
        if pre is not None:                     # relu's backward needs only post (ops.mlp_forward says why)
            cache[f"{p}.mlp.hook_pre"] = pre
        cache[f"{p}.mlp.hook_post"] = post
        cache[f"{p}.hook_resid_post"] = x
        return x

    def _block_backward(self, l, dx, cache, myopia=None):  # (B, T, C), cache, int or None -> (B, T, C)
        """myopia=M (Wu, Morris, Levine 2024, "Do Language Models Plan for Future Tokens?"): the forward is
        unchanged, but the key and value that query t reads from a position s with t - s > M count as computed
        from a stop-gradient copy of s's ln1 output. So W_K, W_V, b_K, b_V get their full gradient, and the
        residual stream at s gets only the part from queries t <= s + M: dW += h^T (dk_near + dk_far),
        dh = dk_near W^T. M = 0 is the fully myopic model: no gradient crosses positions at all.
        The cut is per layer, so across layers the reach compounds through intermediate positions: the loss at
        t can reach t - M in layer L-1, which reaches t - 2M in layer L-2, ... up to t - n_layers*M.
        dx, the residual stream's gradient, is updated in place and returned."""
        ops, P, G, p = self.ops, self.params, self.params.grads, f"blocks.{l}"
        # MLP, forward was: x = x + mlp_out  ->  the residual passes dx through unchanged, plus the MLP path
        W_in, _, W_out, _ = self._mlp(l)
        dW_in, db_in, dW_out, db_out = self._mlp(l, G)
        dh = ops.mlp_backward(dW_in, db_in, dW_out, db_out, dx, cache[f"{p}.ln2.hook_normalized"], W_in,
                              cache.get(f"{p}.mlp.hook_pre"), cache[f"{p}.mlp.hook_post"], W_out,
                              self._act)                                                        # (B, T, C)
        self._norm_backward_add(f"{p}.ln2", dx, dh, cache[f"{p}.hook_resid_mid"], cache)        # dx += (B, T, C)
        # attention, forward was: x = x + attn_out
        dzm = ops.linear_backward(self._W_O(l, G), G[f"{p}.attn.b_O"], dx,
                                  cache[f"{p}.attn.z_merged"], self._W_O(l))                     # (B, T, NH*HS)
        dz = split_heads(dzm, self.config.n_heads)                                              # (B, NH, T, HS)
        qkv_pattern = (cache[f"{p}.attn.hook_q"], cache[f"{p}.attn.hook_k"], cache[f"{p}.attn.hook_v"],
                       cache[f"{p}.attn.hook_pattern"])
        if myopia is None:
            dq, dk, dv = ops.attention_backward(dz, *qkv_pattern)                               # (B, NH, T, HS) x3
        else:   # dk, dv: pairs t - s <= M (reach h at s); dk_far, dv_far: pairs t - s > M (weights only)
            dq, dk, dv, dk_far, dv_far = ops.attention_backward(dz, *qkv_pattern, window=myopia)
        W_qkv = cache[f"{p}.attn.W_qkv"]
        h = cache[f"{p}.ln1.hook_normalized"]                                                    # (B, T, C)
        dW_qkv = np.zeros_like(W_qkv)                                                          # (C, 3*NH*HS)
        _, db_qkv = self._qkv_views(l, self.params.grad)          # b_Q | b_K | b_V are adjacent in grad: accumulate in place
        db_qkv = db_qkv.reshape(-1)                                                             # (3*NH*HS,)
        dh = ops.linear_backward(dW_qkv, db_qkv, join_qkv(dq, dk, dv), h, W_qkv)                # (B, T, C)
        if myopia is not None:
            # forward was: k, v = h @ W_K + b_K, h @ W_V + b_V with h a stop-gradient copy for far queries
            #   ->  dW_K += h^T dk_far ; db_K += sum(dk_far) (same for V) ; nothing flows into h
            dfar = join_qkv(np.zeros_like(dq), dk_far, dv_far).reshape(-1, W_qkv.shape[1])     # (N, 3*NH*HS)
            dW_qkv += h.reshape(-1, h.shape[-1]).T @ dfar
            db_qkv += dfar.sum(axis=0)
        self._qkv_scatter(l, dW_qkv)
        self._norm_backward_add(f"{p}.ln1", dx, dh, cache[f"{p}.hook_resid_pre"], cache)        # dx += (B, T, C)
        return dx

    # ------------------------------------------------------------------------------------------------------
    # the fused attention projections, as views of / gathers from the TransformerLens tensors
    def _qkv_views(self, l, flat):  # flat params.data or params.grad -> W (3, NH, C, HS), b (3, NH, HS) views
        """W_Q, W_K, W_V are adjacent in the flat buffer (param_spec), and so are b_Q, b_K, b_V: one view each."""
        cfg, p, o = self.config, f"blocks.{l}.attn", self.params.offsets
        W = flat[o[f"{p}.W_Q"][0]:o[f"{p}.W_V"][1]].reshape(3, cfg.n_heads, cfg.d_model, cfg.d_head)
        b = flat[o[f"{p}.b_Q"][0]:o[f"{p}.b_V"][1]].reshape(3, cfg.n_heads, cfg.d_head)
        return W, b

    def _qkv_gather(self, l):  # -> W_qkv (C, 3*NH*HS) copy, b_qkv (3*NH*HS,) view
        W, b = self._qkv_views(l, self.params.data)
        C = self.config.d_model
        return np.ascontiguousarray(W.transpose(2, 0, 1, 3)).reshape(C, -1), b.reshape(-1)

    def _qkv_scatter(self, l, dW_qkv):  # (C, 3*NH*HS) -> += into the grads of W_Q, W_K, W_V
        dW, _ = self._qkv_views(l, self.params.grad)
        cfg = self.config
        dW += dW_qkv.reshape(cfg.d_model, 3, cfg.n_heads, cfg.d_head).transpose(1, 2, 0, 3)

    def _mlp(self, l, buffers=None):  # -> W_in (C, F), b_in (F,), W_out (F, C), b_out (C,) (or their gradients)
        buffers = self.params.values if buffers is None else buffers
        return tuple(buffers[f"blocks.{l}.mlp.{name}"] for name in ("W_in", "b_in", "W_out", "b_out"))

    def _W_O(self, l, buffers=None):  # -> (NH*HS, C) view of W_O (or of its gradient)
        buffers = self.params.values if buffers is None else buffers
        return buffers[f"blocks.{l}.attn.W_O"].reshape(-1, self.config.d_model)

    # ------------------------------------------------------------------------------------------------------
    def logits(self, tokens):  # (B, T) int -> (B, T, V)
        return self.forward(tokens)[0]

    def continuation_logits(self, prefix, depth):  # (B, t) int, int -> [(B, V, V), (B, V^2, V), ..., (B, V^depth, V)]
        """Logits after prefix + c for every continuation c of 1..depth tokens (level j: the V^j continuations
        of length j in lexicographic order): the numbers of logits(concat(prefix, c))[:, -1] up to float rounding,
        from a KV-cache forward over the tree of continuations. The prefix runs once; then, level by level, each
        new token attends to the prefix's cached keys and values and to those of its own ancestors, so the cost
        is B (V + V^2 + ... + V^depth) new tokens instead of B V^depth (t + depth)."""
        ops, P, cfg, V = self.ops, self.params, self.config, self.config.d_vocab
        prefix = check_tokens(prefix, cfg)
        B, t = prefix.shape
        if t + depth > cfg.n_ctx:
            raise TinyseqError(f"a prefix of {t} tokens plus {depth} more is longer than the context {cfg.n_ctx}")
        _, cache = self.forward(prefix)
        kv = [[(cache[f"blocks.{l}.attn.hook_k"][:, None], cache[f"blocks.{l}.attn.hook_v"][:, None])]
              for l in range(cfg.n_layers)]                       # per layer, per level: (B, 1 or V^j, NH, ., HS)
        levels = []
        for j in range(1, depth + 1):
            x = P["embed.W_E"][np.arange(V ** j) % V] + P["pos_embed.W_pos"][t + j - 1]  # (V^j, C) last token
            x = np.broadcast_to(x, (B,) + x.shape).reshape(B * V ** j, 1, cfg.d_model)  # (B*V^j, 1, C) a copy
            anc = [np.arange(V ** j) // V ** (j - d) for d in range(1, j + 1)]  # ancestor at level d (d = j: itself)
            for l in range(cfg.n_layers):
                x = self._tree_block(l, x, kv[l], anc)
            xf = self._norm_forward("ln_final", x, {})
            levels.append(ops.linear_forward(xf, P["unembed.W_U"], P["unembed.b_U"]).reshape(B, V ** j, V))
        return levels

    def prefix_tree_logits(self, tokens):  # (N, T) int -> (N, T, V)
        """logits(tokens), computed once per distinct prefix (prefix_tree_forward without hooks)."""
        return self.prefix_tree_forward(tokens)[0]

    def prefix_tree_forward(self, tokens, hooks=None):  # (N, T) int, [hook name] -> (N, T, V), {hook: (N, T, C)}
        """forward(tokens)'s logits and the residual stream at `hooks` (names from hook_names(); None: none),
        computed once per distinct prefix. The logits, keys, values and activations at position t depend only
        on x_1..x_t (the model is causal), so sequences that share their first t tokens share them; a held-out
        set of 4096 mess3 sequences of 10 tokens has 7,336 distinct prefixes for its 40,960 positions
        (distinct_prefixes). Each distinct position costs more than one of the plain forward (a gather of its
        ancestors' keys per level), so with little sharing (long contexts) the plain forward is faster.
        Level t of the prefix tree holds the distinct prefixes of length t + 1; each new token attends over the
        cached keys and values of its ancestors (as continuation_logits, with no shared prefix). The results
        are computed as one row per distinct prefix (15% of the N * T positions on mess3's complete tree of 10
        tokens), then each position reads its prefix's row."""
        ops, P, cfg, V = self.ops, self.params, self.config, self.config.d_vocab
        tokens = check_tokens(tokens, cfg)
        N, T = tokens.shape
        unknown = sorted(set(hooks or ()) - set(self.hook_names()))
        if unknown:
            raise TinyseqError(f"no hook {unknown[0]!r} in this transformer: "
                               f"use one of {', '.join(self.hook_names())}")
        none = np.zeros((1, 1, cfg.n_heads, 0, cfg.d_head), dtype=P.dtype)    # no shared prefix: 0 keys
        kv = [[(none, none)] for _ in range(cfg.n_layers)]
        anc = []                                            # per level 0..t: each node's ancestor there
        levels = prefix_levels(tokens, V)
        start = np.cumsum([0] + [len(uniq) for uniq, _ in levels])      # level t's rows: start[t]..start[t+1]
        logits = np.empty((start[-1], V), dtype=P.dtype)                 # one row per distinct prefix
        acts = {h: np.empty((start[-1], cfg.d_model), dtype=P.dtype) for h in hooks or ()}
        for t, (uniq, _) in enumerate(levels):
            anc = [a[uniq // V] for a in anc] + [np.arange(len(uniq))]                # (n,) per level 0..t
            x = (P["embed.W_E"][uniq % V] + P["pos_embed.W_pos"][t])[:, None]          # (n, 1, C)
            level = {}                                      # this level's hooks, per distinct prefix (n, 1, C)
            for l in range(cfg.n_layers):
                x = self._tree_block(l, x, kv[l], anc, level)
            xf = self._norm_forward("ln_final", x, level)
            rows = slice(start[t], start[t + 1])
            logits[rows] = ops.linear_forward(xf, P["unembed.W_U"], P["unembed.b_U"])[:, 0]
            for h, a in acts.items():
                a[rows] = level[h][:, 0]
        row = np.stack([start[t] + node for t, (_, node) in enumerate(levels)], axis=1)  # (N, T): each position's
        return logits[row], {h: a[row] for h, a in acts.items()}                    # prefix -> (N, T, V), (N, T, C)

    def _tree_block(self, l, x, kv, anc, cache=None):
        # (B*n, 1, C), [prefix (k, v), level 1 (k, v), ...], [(n,) per level 1..j], dict -> (B*n, 1, C)
        """_block_forward for the n tokens of level j of a tree of continuations of a prefix; appends their keys
        and values to kv. anc[d - 1][i] is node i's ancestor at level d (anc[j - 1][i] = i itself).
        cache, if given, gets the block's residual stream hooks (resid_pre, resid_mid, resid_post) as
        _block_forward's does, for these n tokens."""
        ops, P, p, NH = self.ops, self.params, f"blocks.{l}", self.config.n_heads
        cache = {} if cache is None else cache
        cache[f"{p}.hook_resid_pre"] = x
        h = self._norm_forward(f"{p}.ln1", x, cache)
        qkv = ops.linear_forward(h, *self._qkv_gather(l))                  # (B*n, 1, 3*NH*HS)
        B = kv[0][0].shape[0]
        q, k, v = (a.reshape((B, -1) + a.shape[1:]) for a in split_qkv(qkv, NH))  # (B, n, NH, 1, HS)
        kv.append((k, v))
        k_path = [kv[d][0][:, a] for d, a in enumerate(anc, start=1)]    # j x (B, n, NH, 1, HS): each node's
        v_path = [kv[d][1][:, a] for d, a in enumerate(anc, start=1)]    # ancestors' keys / values, and its own
        z = tree_attention(q, kv[0][0], kv[0][1], k_path, v_path)           # (B, n, NH, 1, HS)
        zm = merge_heads(z.reshape((-1,) + z.shape[2:]))                     # (B*n, 1, NH*HS)
        x = ops.linear_residual_forward(zm, self._W_O(l), P[f"{p}.attn.b_O"], x)
        cache[f"{p}.hook_resid_mid"] = x
        h = self._norm_forward(f"{p}.ln2", x, cache)
        x = ops.mlp_forward(h, *self._mlp(l), x, self._act)[2]
        cache[f"{p}.hook_resid_post"] = x
        return x

    def hook_names(self) -> list[str]:
        """The residual stream's hook points in pipeline order (the keys of activations)."""
        names = ["blocks.0.hook_resid_pre"]
        for l in range(self.config.n_layers):
            names += [f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_resid_post"]
        if self.config.normalization_type is not None:
            names.append("ln_final.hook_normalized")
        return names

    def activations(self, tokens):  # (B, T) int -> {hook name: (B, T, C)} in pipeline order
        """The residual stream at TransformerLens hook points: blocks.0.hook_resid_pre (embeddings), then
        blocks.{l}.hook_resid_mid / hook_resid_post per block, then ln_final.hook_normalized (if LayerNorm)."""
        _, cache = self.forward(tokens)
        return {name: cache[name] for name in self.hook_names()}


# ----------------------------------------------------------------------------------------------------------
# the tree of distinct prefixes of a set of sequences (prefix_tree_forward)
def prefix_levels(tokens, V):  # (N, T) int, V > every token -> [(uniq (n_t,), node (N,))] for t = 0..T-1
    """Level t: the distinct prefixes x_1..x_{t+1}, each a key parent node * V + token (uniq, sorted; the parent
    is key // V, the token key % V), and each sequence's node among them. A key is below n_{t-1} * V, so a
    table of that many flags says which keys occur, in order (as np.unique, without its sort)."""
    node, n, levels = np.zeros(len(tokens), dtype=np.int64), 1, []
    for t in range(tokens.shape[1]):
        key = node * V + tokens[:, t]                                   # (N,)
        seen = np.zeros(n * V, dtype=bool)
        seen[key] = True
        uniq = np.flatnonzero(seen)                                     # (n_t,) the keys that occur, sorted
        node, n = (np.cumsum(seen) - 1)[key], len(uniq)                 # (N,) each key's rank among them
        levels.append((uniq, node))
    return levels


def distinct_prefixes(tokens) -> int:  # (N, T) int -> how many positions prefix_tree_forward computes
    tokens = np.asarray(tokens)
    return sum(len(uniq) for uniq, _ in prefix_levels(tokens, int(tokens.max()) + 1)) if tokens.size else 0


# ----------------------------------------------------------------------------------------------------------
# head layouts: the fused projection is (B, T, 3, NH, HS) in memory; attention works per head (B, NH, T, HS)
def split_qkv(qkv, n_heads):  # (B, T, 3*NH*HS) -> q, k, v views (B, NH, T, HS), no copies
    B, T, D = qkv.shape
    heads = qkv.reshape(B, T, 3, n_heads, D // (3 * n_heads)).transpose(2, 0, 3, 1, 4)   # (3, B, NH, T, HS)
    return heads[0], heads[1], heads[2]


def tree_attention(q, k_pre, v_pre, k_path, v_path):
    # (..., NH, 1, HS), (..., NH, t, HS) x2, [(..., NH, 1, HS)] x2 one per path level -> (..., NH, 1, HS)
    """One new query per node over the t prefix keys and the j keys of its path (ancestors and itself): all
    earlier positions, so nothing is masked. The path comes as a list, one array per level: joining them into
    one (..., NH, j, HS) array copies 64-byte pieces to strided places, and took 2/3 of the time on mess3's
    full tree; a score per level is q . k over HS (einsum: 4x faster than (q * k).sum(-1) on 16 numbers)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = [q @ k_pre.swapaxes(-1, -2)] + [np.einsum("...d,...d->...", q, k)[..., None] for k in k_path]
    att = numpy_ops.softmax(np.concatenate(scores, axis=-1) * scale)    # (..., NH, 1, t + j)
    t = k_pre.shape[-2]
    z = att[..., :t] @ v_pre                                             # (..., NH, 1, HS)
    for d, v in enumerate(v_path):
        z += att[..., t + d:t + d + 1] * v
    return z


def join_qkv(dq, dk, dv):  # (B, NH, T, HS) x3 -> (B, T, 3*NH*HS), the layout of split_qkv's input
    B, NH, T, HS = dq.shape
    out = np.empty((B, T, 3, NH, HS), dtype=dq.dtype)
    for i, d in enumerate((dq, dk, dv)):
        out[:, :, i] = d.transpose(0, 2, 1, 3)
    return out.reshape(B, T, 3 * NH * HS)


def split_heads(x, n_heads):  # (B, T, NH*HS) -> (B, NH, T, HS) view
    B, T, D = x.shape
    return x.reshape(B, T, n_heads, D // n_heads).transpose(0, 2, 1, 3)


def merge_heads(z):  # (B, NH, T, HS) -> (B, T, NH*HS) (free when z is a view of (B, T, NH, HS) memory)
    B, NH, T, HS = z.shape
    return z.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)
