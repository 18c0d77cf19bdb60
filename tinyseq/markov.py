"""Markov-chain helpers that processes.py (validation: one closed class) and beliefs.py (the MSP chain's long-run
distribution) both need. Kept apart so that neither of those imports the other: the pipeline reads
processes -> beliefs, and both stand on this."""
from __future__ import annotations

import numpy as np


def closed_classes(M: np.ndarray) -> list[list[int]]:
    """Closed communicating classes of the directed graph i -> j where M[i, j] > 0 (S is small: dense)."""
    S = M.shape[0]
    reach = (M > 0) | np.eye(S, dtype=bool)
    for k in range(S):  # Warshall transitive closure
        reach |= reach[:, k:k + 1] & reach[k:k + 1, :]
    classes, seen = [], set()
    for i in range(S):
        if i in seen:
            continue
        cls = [j for j in range(S) if reach[i, j] and reach[j, i]]
        seen.update(cls)
        # closed: nothing reachable from the class lies outside it
        if all(set(np.flatnonzero(reach[j]).tolist()) <= set(cls) for j in cls):
            classes.append(cls)
    return classes


def stationary_distribution(M: np.ndarray) -> np.ndarray:
    """The left eigenvector of M for eigenvalue 1, normalised; assumes exactly one closed class."""
    S = M.shape[0]
    # solve pi (M - I) = 0 with sum(pi) = 1 as one least-squares system (exact for a unique solution)
    A = np.vstack([(M - np.eye(S)).T, np.ones((1, S))])
    rhs = np.zeros(S + 1)
    rhs[-1] = 1.0
    pi, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()
