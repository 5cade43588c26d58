"""What the rule server S1 may see, and what a rule returns.

``distances[i, j] = ||x_i - x_j||^2`` and ``norms[i] = ||x_i - v||^2`` (v the public center, 0 by
default), both decoded from exact ring values. A rule maps this view to public weights w and a
center weight w_v; the aggregate is sum_i w_i x_i + w_v v. ``view_range`` bounds its entries for accepted
inputs (docs/ranges.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..circuits import clip
from ..primitives import ring

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


def dmax_for(bound: int) -> int:
    """The largest squared distance between two vectors of norm at most ``bound`` (scaled units)."""
    return (2 * int(bound)) ** 2


def view_range(bound: int, center: np.ndarray | None = None) -> int:
    """The largest entry of a rule's view (squared distances, norms, or cclip's ||x_i - v||^2) for accepted
    inputs: every accepted x_i has ||x_i|| <= b (the validity check), so ||x_i - x_j||^2 <= (2b)^2 and, for a
    public center v, ||x_i - v||^2 <= (b + ||v||)^2. Returns max((2b)^2, (b + ceil ||v||)^2): a center of
    norm at most b keeps (2b)^2, so those rounds are unchanged. Raises ValueError when the range would
    pass the clip circuit's 2^58 (docs/ranges.md)."""
    dmax = dmax_for(bound)
    if center is None:
        return dmax
    reach = (int(bound) + ring.ceil_norm(center)) ** 2
    if reach > clip.MAX_NMAX:
        raise ValueError(f"the center's norm plus the norm bound reaches 2^{reach.bit_length() - 1} squared scaled "
                         "units, beyond the clip circuit's range 2^58: lower frac_bits or the center")
    return max(dmax, reach)
