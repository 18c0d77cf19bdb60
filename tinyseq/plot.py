"""The belief simplex as a picture: in the terminal (Unicode braille, works over ssh) and, optionally, as a PNG.

For 3 hidden states a belief (b0, b1, b2) is a point of a triangle (ternary projection); for more states we
project onto the two principal axes of the true beliefs, and put the probed beliefs through the *same* map so
the two panels are comparable point for point.
"""
from __future__ import annotations

import textwrap

import numpy as np

from tinyseq.errors import TinyseqError

# braille: each character cell is a 2 x 4 grid of dots; bit of dot (col, row)
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def projection(true_beliefs):  # (N, S) -> function (M, S) -> (M, 2), description
    """A 2-d map for beliefs: the ternary triangle for S = 3, PCA of the true beliefs otherwise."""
    Y = np.asarray(true_beliefs, dtype=np.float64)
    S = Y.shape[1]
    if S == 3:
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # (3, 2) vertex of each state
        return (lambda B: np.asarray(B) @ corners), "ternary projection (corners = hidden states 0, 1, 2)"
    if S == 2:
        return (lambda B: np.stack([np.asarray(B)[:, 1], np.zeros(len(B))], axis=1)), "P(state 1) on the x-axis"
    mean = Y.mean(axis=0)
    _, _, vt = np.linalg.svd(Y - mean, full_matrices=False)
    axes = vt[:2].T                                             # (S, 2) top principal directions
    return (lambda B: (np.asarray(B) - mean) @ axes), "first two principal axes of the true beliefs"


def braille_panel(points, bounds, width=36, height=14):  # (N, 2), (xmin, xmax, ymin, ymax) -> list of str
    """Points as braille dots on a width x height character grid (2*width x 4*height dots)."""
    xmin, xmax, ymin, ymax = bounds
    grid = np.zeros((height, width), dtype=np.int64)
    if len(points):
        px = (points[:, 0] - xmin) / max(xmax - xmin, 1e-12) * (2 * width - 1)
        py = (ymax - points[:, 1]) / max(ymax - ymin, 1e-12) * (4 * height - 1)   # row 0 at the top
        ok = np.isfinite(px) & np.isfinite(py)
        ix = np.clip(np.round(px[ok]).astype(int), 0, 2 * width - 1)
        iy = np.clip(np.round(py[ok]).astype(int), 0, 4 * height - 1)
        bits = np.array(_BRAILLE_BITS)[iy % 4, ix % 2]
        np.bitwise_or.at(grid, (iy // 4, ix // 2), bits)
    return ["".join(chr(0x2800 + v) if v else " " for v in row) for row in grid]


def simplex_picture(true_beliefs, probed_beliefs, titles=("true beliefs", "probed from the network"),
                    width=34, height=13) -> str:
    """Two panels side by side: the exact beliefs and the network's linear read-out of them."""
    Y = np.asarray(true_beliefs, dtype=np.float64)
    P = np.asarray(probed_beliefs, dtype=np.float64)
    if Y.ndim != 2 or Y.shape != P.shape:
        raise TinyseqError(f"beliefs must be two (N, S) arrays of one shape, got {Y.shape} and {P.shape}")
    proj, how = projection(Y)
    a, b = proj(Y), proj(P)
    lo = a.min(axis=0)
    hi = a.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    if Y.shape[1] == 2:
        lo[1], hi[1] = -1.0, 1.0
    bounds = (lo[0], hi[0], lo[1], hi[1])
    left = braille_panel(a, bounds, width, height)
    right = braille_panel(b, bounds, width, height)
    sep = " " * PANEL_GAP
    lines = [f"{titles[0][:width]:<{width}}{sep}{titles[1][:width]:<{width}}"]
    lines += [f"{l}{sep}{r}" for l, r in zip(left, right)]
    lines += textwrap.wrap(f"({how}; same axes in both panels)", 2 * width + PANEL_GAP)
    return "\n".join(lines)


PANEL_GAP = 3          # spaces between the two panels


def picture_size(columns: int, max_width: int = 60) -> tuple[int, int]:
    """Panel width and height (characters) so that two panels side by side fit `columns`; the height keeps the
    34 x 13 proportions of the default (braille dots are 2 x 4 per character, so the simplex looks equilateral)."""
    width = max(20, min(max_width, (columns - PANEL_GAP) // 2))
    return width, max(8, round(width * 13 / 34))


def simplex_png(path, true_beliefs, probed_beliefs, titles=("true beliefs", "probed from the network"),
                colors=None) -> None:
    """The same two panels as a PNG (needs matplotlib: pip install 'tinyseq[plot]')."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TinyseqError("--png needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    Y = np.asarray(true_beliefs, dtype=np.float64)
    P = np.asarray(probed_beliefs, dtype=np.float64)
    proj, how = projection(Y)
    a, b = proj(Y), proj(P)
    c = colors if colors is not None else (np.clip(Y[:, :3], 0, 1) if Y.shape[1] >= 3 else None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    for ax, pts, title in zip(axes, (a, b), titles):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, c=c, alpha=0.7, linewidths=0)
        ax.set_title(title)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(how, fontsize=9)
    fig.tight_layout()
    import os
    import tempfile
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=130)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
