"""What the rule server S1 may see, and what a rule returns.

``distances[i, j] = ||x_i - x_j||^2`` and ``norms[i] = ||x_i - v||^2`` (v the public center, 0 by
default), both decoded from exact ring values. A rule maps this view to public weights w and a
center weight w_v; the aggregate is sum_i w_i x_i + w_v v.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DISTANCES = "distances"
NORMS = "norms"


@dataclass(frozen=True, eq=False)
class View:
    distances: np.ndarray | None = None
    norms: np.ndarray | None = None

    def need(self, what: str) -> np.ndarray:
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"this rule needs {what}, which the view does not hold")
        return value


@dataclass(frozen=True, eq=False)
class Choice:
    weights: np.ndarray
    center_weight: float = 0.0


def view_words(h: np.ndarray, reveal: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The linear map from (a share of) H, whose symmetrisation is the Gram matrix, to (a share of) the view
    in Z_2^64: D_ij = H_ii + H_jj - H_ij - H_ji and norms_i = H_ii. ``h`` may also be the diagonal alone."""
    diag = np.diagonal(h).copy() if h.ndim == 2 else h
    out = {}
    if DISTANCES in reveal:
        out[DISTANCES] = diag[:, None] + diag[None, :] - h - h.T
    if NORMS in reveal:
        out[NORMS] = diag
    return out


def distances_to_affine(distances: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """||p_i - z||^2 for z = sum_k beta_k p_k with sum beta = 1, from pairwise squared distances alone.

    Uses sum_k beta_k ||p_i - p_k||^2 = ||p_i - z||^2 + (1/2) sum_{k,l} beta_k beta_l ||p_k - p_l||^2.
    """
    db = distances @ beta
    return np.maximum(db - 0.5 * float(beta @ db), 0.0)
