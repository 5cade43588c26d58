"""Norm clipping and centered clipping: shrink large updates by min(1, tau / ||x_i - v||) (v = 0 for norm-clip).

On the opened norms S1 computes the factors here; on shares ``circuits.clip`` computes them from the shared
squared norms by a 2PC reciprocal square root (docs/clip2pc.md) and only the weights (or the aggregate) open.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..circuits import clip
from ..gates import arith
from ..gates.compare import Party
from ..primitives import ring
from .spec import Rule, RuleSpec, SecureRule
from .view import DISTANCES, NORMS, Choice, View, distances_to_affine

_U = np.uint64


def _clip_factors(dist: np.ndarray, tau: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(dist > tau, tau / np.where(dist > 0, dist, 1.0), 1.0)


def _check_tau(tau: float | None) -> None:
    if tau is not None and not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")


def choose_norm_clip(view: View, n: int, f: int, tau: float | None = None) -> Choice:
    """w_i = min(1, tau / ||x_i||) / n; tau defaults to the median norm. Opens the norms ||x_i||^2."""
    _check_tau(tau)
    norms = np.sqrt(view.need(NORMS))
    tau = float(np.median(norms)) if tau is None else float(tau)
    return Choice(_clip_factors(norms, tau) / n)


def choose_cclip(view: View, n: int, f: int, tau: float | None = None, iterations: int = 1) -> Choice:
    """Centered clipping (Karimireddy, He, Jaggi 2021): v <- v + (1/n) sum_i min(1, tau/||x_i - v||)(x_i - v),
    from the public center v (default 0; the protocol shifts the view by it), ``iterations`` times;
    tau defaults to the median ||x_i - v||.

    One iteration opens only ||x_i - v||^2; more iterations also open the pairwise distances, because
    the later centers are affine combinations of v and the x_i.
    """
    _check_tau(tau)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"cclip iterations must be a positive integer, got {iterations!r}")
    to_center = view.need(NORMS)
    ext = None
    if iterations > 1:
        ext = np.zeros((n + 1, n + 1))
        ext[0, 1:] = ext[1:, 0] = to_center
        ext[1:, 1:] = view.need(DISTANCES)
    beta = np.zeros(n + 1)
    beta[0] = 1.0
    dist = np.sqrt(to_center)
    tau = float(np.median(dist)) if tau is None else float(tau)
    for step in range(int(iterations)):
        if step:
            dist = np.sqrt(distances_to_affine(ext, beta)[1:])
        c = _clip_factors(dist, tau) / n
        beta = beta * (1.0 - c.sum())
        beta[1:] += c
    return Choice(beta[1:], float(beta[0]))


def _cclip_reveals(options: dict) -> tuple[str, ...]:
    return (DISTANCES, NORMS) if options.get("iterations", 1) > 1 else (NORMS,)


# On shares (``circuits.clip``): the clip factors min(1, tau/||x_i - v||) on shared squared norms.

def _on_shares(name: str):
    def _tau(options: dict) -> float | None:
        iterations = options.get("iterations", 1)
        if iterations != 1:
            raise ValueError(f"cclip on shares runs one iteration (more would open or multiply the distances); "
                             f"got iterations={iterations!r}: use reveal='distances' for more")
        return options.get("tau")

    def split(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (w[:-1], w[-1]) if name == "cclip" else (w, _U(0))

    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Material, *,
                frac_bits: int = ring.DEFAULT_FRAC_BITS, **_: Any) -> Party:
        w = yield from clip.clip_weights_circuit(party, view[NORMS], _tau(options), name, src, frac_bits=frac_bits,
                                                    nmax=dmax)
        return split(w)

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              **_: Any) -> tuple[np.ndarray, np.ndarray]:
        return split(clip.plain_clip_weights(view[NORMS], _tau(options), name, frac_bits=frac_bits, nmax=dmax))

    return SecureRule(name, (NORMS,), circuit, plain,
                      options=("tau",) if name == "norm-clip" else ("tau", "iterations"),
                      limits=" (clip factors by a 2PC reciprocal square root, error <= 2^-28 relative "
                             "for a public tau, 2^-25 for the median: docs/clip2pc.md)")


RULES = (
    Rule(RuleSpec("norm-clip", choose_norm_clip, lambda _: (NORMS,), lambda f: 2 * f + 1, "n >= 2f + 1"),
         _on_shares("norm-clip")),
    Rule(RuleSpec("cclip", choose_cclip, _cclip_reveals, lambda f: 2 * f + 1, "n >= 2f + 1"), _on_shares("cclip"),
         takes_center=True),
)
