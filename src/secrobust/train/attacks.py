r"""Byzantine attacks as plain callables with one signature.

Every attack is called as ``attack(honest, own, rng) -> byzantine`` where

- ``honest``: (h, d) the updates the h honest workers send this round (attacks are omniscient:
  they may read them, as in the papers below);
- ``own``: (f, d) the updates the f Byzantine workers would have sent had they been honest
  (computed on their own data, with flipped labels for the label-flip attack);
- ``rng``: a seeded ``numpy.random.Generator`` (the only source of randomness);
- the result: (f, d) float64, the rows the Byzantine workers send instead.

Inputs may be NumPy arrays or CPU torch tensors; outputs are NumPy. Options (scale, epsilon, ...)
are keyword arguments; ``make_attack(name, **options)`` binds them and rejects unknown ones.
Below, \mu and \sigma are the coordinate-wise mean and standard deviation of the honest rows.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import norm as _normal

Attack = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _rows(honest: Any, own: Any) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(honest, dtype=np.float64)
    o = np.asarray(own, dtype=np.float64)
    if h.ndim != 2 or o.ndim != 2 or (h.size and o.size and h.shape[1] != o.shape[1]):
        raise ValueError(f"expected honest (h, d) and own (f, d), got {h.shape} and {o.shape}")
    return h, o


def none(honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
    """No attack: the Byzantine workers send their honest updates (the baseline row)."""
    _, o = _rows(honest, own)
    return o.copy()


def sign_flip(honest: Any, own: Any, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    r"""Sign flip: worker j sends :math:`-s\, g_j`, its own honest update negated and scaled.

    With s = 1 this is the bit-flipping / sign-flipping attack of Karimireddy, He, Jaggi,
    "Learning from History for Byzantine Robust Optimization" (ICML 2021) and Allen-Zhu,
    Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic Gradient Descent"
    (ICLR 2021). With f Byzantine and h honest workers the plain mean is
    :math:`(\sum_{honest} g_i - s \sum_{byz} g_j)/n`, which points uphill once f s > h
    (s > 4 for 4 of 20 workers).
    """
    _, o = _rows(honest, own)
    return -float(scale) * o


def label_flip(honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
    r"""Label flip: the Byzantine workers train honestly on labels mapped y -> 9 - y.

    The poisoning happens in the data (``data.flip_labels``; the runner flips the labels of the
    Byzantine workers when ``flips_labels("label-flip")`` is true), so the update is ``own``
    unchanged. Used as "LF" by Karimireddy, He, Jaggi (ICML 2021) and by Allen-Zhu et al.
    (ICLR 2021).
    """
    _, o = _rows(honest, own)
    return o.copy()


def gaussian(honest: Any, own: Any, rng: np.random.Generator, *, std: float = 1.0) -> np.ndarray:
    r"""Gaussian noise: each Byzantine row is drawn from :math:`\mathcal N(0, \mathrm{std}^2 I_d)`.

    The random-vector Byzantine behaviour of Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine
    Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS 2017).
    """
    _, o = _rows(honest, own)
    return rng.normal(0.0, float(std), size=o.shape)


def ipm(honest: Any, own: Any, rng: np.random.Generator, *, epsilon: float = 0.1) -> np.ndarray:
    r"""Inner-product manipulation: every Byzantine row is :math:`-\varepsilon \mu`.

    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation" (UAI 2019). A small epsilon (0.1) keeps the rows close to the honest ones so that
    distance-based rules accept them while the inner product of the aggregate with the true
    gradient shrinks or turns negative; a large epsilon defeats the mean.
    """
    h, o = _rows(honest, own)
    return np.tile(-float(epsilon) * h.mean(axis=0), (o.shape[0], 1))


def alie_z(n: int, f: int) -> float:
    r""":math:`z_{max} = \Phi^{-1}((n - s)/n)` with :math:`s = \lfloor n/2 + 1 \rfloor - f`.

    s is the number of honest workers the attacker needs on its side for a majority; z_max is the
    largest shift (in standard deviations) that still leaves n - s workers farther from the mean.
    """
    s = n // 2 + 1 - f
    return float(_normal.ppf((n - s) / n))


def alie(honest: Any, own: Any, rng: np.random.Generator, *, z: float | None = None) -> np.ndarray:
    r"""A little is enough: every Byzantine row is :math:`\mu - z\,\sigma` (coordinate-wise).

    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses for Distributed
    Learning" (NeurIPS 2019). By default z = ``alie_z(n, f)`` with n = h + f, the paper's
    z_max (0.385 for n = 20, f = 4). sigma uses ddof = 1. The shift hides inside the honest
    spread in every coordinate, so distance- and median-based rules accept it.
    """
    h, o = _rows(honest, own)
    f = o.shape[0]
    zz = alie_z(h.shape[0] + f, f) if z is None else float(z)
    sigma = h.std(axis=0, ddof=1) if h.shape[0] > 1 else np.zeros(h.shape[1])
    return np.tile(h.mean(axis=0) - zz * sigma, (f, 1))


def mimic(honest: Any, own: Any, rng: np.random.Generator, *, target: int | None = None) -> np.ndarray:
    r"""Mimic: every Byzantine worker copies one honest worker's update :math:`x_{i^*}`.

    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing"
    (ICLR 2022). Over-weighting one honest worker biases the aggregate toward its data under
    heterogeneity while every Byzantine row looks honest. Unless ``target`` fixes i*, it is
    :math:`\arg\max_i |\langle z, x_i - \mu\rangle|` with z the top principal direction of the
    honest rows (the paper's heuristic, here recomputed each round rather than fixed after a
    warm-up phase). Those projections are :math:`s_1 u_1`, so i* is read off the top eigenvector
    u_1 of the h x h Gram matrix of the centred rows.
    """
    h, o = _rows(honest, own)
    if target is None:
        centred = h - h.mean(axis=0)
        _, vectors = np.linalg.eigh(centred @ centred.T)
        i_star = int(np.argmax(np.abs(vectors[:, -1])))
    else:
        if not 0 <= int(target) < h.shape[0]:
            raise ValueError(f"mimic target must be in [0, {h.shape[0]}), got {target}")
        i_star = int(target)
    return np.tile(h[i_star], (o.shape[0], 1))


def zero(honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
    r"""Zero: the Byzantine workers send the zero vector (a crashed or free-riding worker).

    The s = 0 member of the scaled-update family of Blanchard et al. (NeurIPS 2017): it shrinks
    the plain mean by the factor h/n and is harmless but visible to distance-based rules.
    """
    _, o = _rows(honest, own)
    return np.zeros_like(o)


def large_norm(honest: Any, own: Any, rng: np.random.Generator, *, norm: float = 1e4) -> np.ndarray:
    r"""Large norm: every Byzantine row is :math:`-\mathrm{norm}\cdot\mu/\lVert\mu\rVert`.

    Blanchard et al. (NeurIPS 2017), Lemma 1: a single Byzantine worker moves any linear rule
    (the mean) to an arbitrary point. The rows are far outside the honest encoder's range, so the
    runner submits them as ``unchecked`` (a Byzantine worker is not bound by the encoder); with
    ``norm`` large enough their squared distances wrap modulo 2^64 in the secure protocol (see
    the threat model in the README).
    """
    h, o = _rows(honest, own)
    mu = h.mean(axis=0)
    length = float(np.linalg.norm(mu))
    direction = mu / length if length > 0 else np.full(h.shape[1], 1.0 / np.sqrt(h.shape[1]))
    return np.tile(-float(norm) * direction, (o.shape[0], 1))


ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "none": none,
    "sign-flip": sign_flip,
    "label-flip": label_flip,
    "gaussian": gaussian,
    "ipm": ipm,
    "alie": alie,
    "mimic": mimic,
    "zero": zero,
    "large-norm": large_norm,
}

_LABEL_FLIPPING = frozenset({"label-flip"})


def flips_labels(name: str) -> bool:
    """True if attack ``name`` poisons the Byzantine workers' labels before they train."""
    return name in _LABEL_FLIPPING


def attack_options(name: str) -> dict[str, Any]:
    """The keyword options of attack ``name`` and their defaults."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def make_attack(name: str, **options: Any) -> Attack:
    """Bind ``options`` to attack ``name``; ValueError on an unknown name or option."""
    fn = _lookup(name)
    allowed = attack_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for attack {name!r}; allowed: {sorted(allowed) or 'none'}"
        )
    return functools.partial(fn, **options) if options else fn


def _lookup(name: str) -> Callable[..., np.ndarray]:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; allowed: {', '.join(ATTACKS)}") from None
