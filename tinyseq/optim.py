"""The optimiser: AdamW over the flat parameter buffer, gradient clipping by global norm, and the learning-rate
schedule (linear warmup, then cosine to exactly zero at the end of the budget).

    m = beta1 m + (1 - beta1) g            first moment (a running mean of the gradient)
    v = beta2 v + (1 - beta2) g^2          second moment (a running mean of its square)
    p = p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)      m_hat, v_hat: bias-corrected

`adamw_step` is the plain NumPy reference, step by step as PyTorch's torch.optim.AdamW; `adamw_step_numba`
is its Numba twin (one pass over the buffers instead of a dozen), checked against it in
tests/test_train.py::test_adamw_numba_matches_numpy.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


def adamw_step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    # (P,) params, (P,) grad, (P,) m, (P,) v, t = 1-based step count; updates p, m, v in place
    m *= beta1
    m += (1 - beta1) * g                       # m = beta1 m + (1 - beta1) g       first moment
    v *= beta2
    v += (1 - beta2) * (g * g)                 # v = beta2 v + (1 - beta2) g^2     second moment
    bc1 = 1 - beta1 ** t                       # bias corrections: m and v start at 0, so early
    bc2 = 1 - beta2 ** t                       # averages are too small by these factors
    p *= 1 - lr * weight_decay                 # decoupled weight decay: shrink p, not the gradient
    p -= (lr / bc1) * m / (np.sqrt(v) / math.sqrt(bc2) + eps)


@njit(cache=True, error_model="numpy")
def _adamw_kernel(p, g, m, v, step_size, beta1, beta2, eps, decay, sqrt_bc2, one):
    # every scalar arrives in p's dtype: a Python float would promote float32 arithmetic to float64.
    # error_model="numpy": a division by zero gives inf/nan as in NumPy instead of a check on every element
    # (Python's ZeroDivisionError), which kept the loop from vectorising: 3x faster, the same bits
    for i in range(p.size):
        m[i] = beta1 * m[i] + (one - beta1) * g[i]
        v[i] = beta2 * v[i] + (one - beta2) * g[i] * g[i]
        p[i] = p[i] * decay - step_size * m[i] / (np.sqrt(v[i]) / sqrt_bc2 + eps)


def adamw_step_numba(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """Numba twin of adamw_step (its reference, above): one pass over the buffers instead of a dozen."""
    dt = p.dtype.type
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    _adamw_kernel(p, g, m, v, dt(lr / bc1), dt(beta1), dt(beta2), dt(eps), dt(1 - lr * weight_decay),
                  dt(math.sqrt(bc2)), dt(1))


@njit(cache=True, fastmath={"reassoc", "contract"})
def _sum_squares(g):  # (P,) -> sum of g^2, accumulated in float64 (NaN and inf propagate: no nnan/ninf)
    total = 0.0
    for i in range(g.size):
        x = np.float64(g[i])
        total += x * x
    return total


def clip_grad_norm(g, max_norm: float) -> float:
    """Scale the flat gradient in place so its global L2 norm is at most max_norm (0: no clipping).
    Returns the norm before clipping (NaN or inf when the gradient is). The norm is summed in float64 by one
    Numba pass (two float64 copies of the gradient and a dot product cost more than the AdamW update);
    tests/test_train.py checks it against np.linalg.norm of the float64 gradient."""
    norm = math.sqrt(_sum_squares(g))
    if max_norm > 0 and norm > max_norm:
        g *= g.dtype.type(max_norm / (norm + 1e-6))  # PyTorch's clip_grad_norm_ coefficient
    return norm


def lr_at(config, step: int, progress: float) -> float:
    """Learning rate of update number `step` (0-based) when `progress` (0..1) of the budget is used up:
    linear warmup over the first `warmup` steps, times 0.5 (1 + cos(pi progress)) for the cosine schedule,
    so the rate reaches exactly 0 as the budget runs out (for a time budget, progress is elapsed / budget)."""
    warm = min(1.0, (step + 1) / config.warmup) if config.warmup > 0 else 1.0
    if config.schedule == "constant":
        return config.lr * warm
    return config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
