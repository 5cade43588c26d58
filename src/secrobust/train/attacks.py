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

Ring attacks (``RING_ATTACKS``, ``is_ring_attack(name)``) are called as
``attack(honest, own, rng, frac_bits) -> byzantine`` and return (f, d) ``uint64``: the exact elements of
Z_2^64 the Byzantine workers send (``ring_rows=`` of the engine), which no float row can express. With
F = ``frac_bits``, E(v) = round(2^F v) mod 2^64 is the honest encoding, y_i = E(honest_i) are the honest
ring rows, and ``~x`` is the signed reading of x in [-2^63, 2^63). The protocol computes squared
distances and norms in Z_2^64, so before the input validity check (``secrobust.circuits.validity``: every
accepted ``~x`` has L2 norm at most B = 2^27) these rows made S1 see values that have nothing to do
with the true vectors; the check rejects all of them (weight 0).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import norm as _normal

from secrobust.primitives import ring

Attack = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
RingAttack = Callable[[np.ndarray, np.ndarray, np.random.Generator, int], np.ndarray]


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


ALIE_Z = 1.5
"""ALIE's default z: ByzFL's ``ALittleIsEnough(tau=1.5)``. ``z="paper"`` is Baruch et al.'s z_max (``alie_z``)."""


def _alie_factor(z: float | str, n: int, f: int) -> float:
    if isinstance(z, str):
        if z != "paper":
            raise ValueError(f"alie z must be a finite number or 'paper' (Baruch et al.'s z_max), got {z!r}")
        return alie_z(n, f)
    if isinstance(z, bool) or not isinstance(z, (int, float, np.integer, np.floating)) or not math.isfinite(z):
        raise ValueError(f"alie z must be a finite number or 'paper' (Baruch et al.'s z_max), got {z!r}")
    return float(z)


def _sigma(h: np.ndarray) -> np.ndarray:
    return h.std(axis=0, ddof=1) if h.shape[0] > 1 else np.zeros(h.shape[1])


def alie(honest: Any, own: Any, rng: np.random.Generator, *, z: float | str = ALIE_Z) -> np.ndarray:
    r"""A little is enough: every Byzantine row is :math:`\mu - z\,\sigma` (coordinate-wise).

    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses for Distributed
    Learning" (NeurIPS 2019). z defaults to 1.5, ByzFL's default (``byzfl.ALittleIsEnough``, which sends
    :math:`\mu + \tau\sigma`: the same attack with the opposite sign, z = -tau). ``z="paper"`` is the
    paper's z_max = ``alie_z(n, f)`` with n = h + f (0.385 for n = 20, f = 4, too small to hurt Krum).
    sigma uses ddof = 1. The shift hides inside the honest spread in every coordinate, so distance- and
    median-based rules accept it.
    """
    h, o = _rows(honest, own)
    f = o.shape[0]
    zz = _alie_factor(z, h.shape[0] + f, f)
    return np.tile(h.mean(axis=0) - zz * _sigma(h), (f, 1))


class Mimic:
    r"""Mimic with a target fixed after a warm-up: every Byzantine worker copies one honest worker's update
    :math:`x_{i^*}`.

    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing" (ICLR 2022),
    as their code runs it (``MimicVariantAttacker`` in epfml/byzantine-robust-noniid-optimizer, whose warm-up
    defaults to 1 round). Over-weighting one honest worker biases the aggregate toward its data under
    heterogeneity while every Byzantine row looks honest. The attacker estimates the top principal direction
    z of the honest updates by an averaged power iteration: in round 0, :math:`\mu = \bar x`, z drawn from
    N(0, I) with ``rng`` and replaced by :math:`\sum_i \langle x_i - \mu, z\rangle (x_i - \mu)` normalised; in
    warm-up round t < ``warmup``, :math:`\mu \leftarrow \frac{t}{t+1}\mu + \frac{1}{t+1}\bar x` and
    :math:`z \leftarrow` the normalised :math:`\frac{t}{t+1} z + \frac{1}{t+1} \hat c` with :math:`\hat c`
    the same sum normalised. In every warm-up round the target is :math:`i^* = \arg\max_i \langle x_i, z\rangle`;
    from round ``warmup`` on, i* is the last warm-up round's and stays fixed. ``target`` fixes i* (an index into
    the honest rows) from the start, with no warm-up. Stateful: ``make_attack`` builds one per run, and the honest
    rows must come in the same order every round (the runner's do).
    """

    def __init__(self, *, warmup: int = 1, target: int | None = None) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 1:
            raise ValueError(f"mimic warmup must be an integer >= 1 (rounds), got {warmup!r}")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, np.integer))
                                   or target < 0):
            raise ValueError(f"mimic target must be None or a non-negative integer, got {target!r}")
        self.warmup, self.target = int(warmup), target
        self.t = 0
        self.mu: np.ndarray | None = None
        self.z: np.ndarray | None = None
        self.chosen: int | None = None

    @property
    def copied(self) -> int | None:
        """i*, the honest row copied (an index into the honest rows, as ``target``): the fixed target, else the
        last warm-up round's choice; None before round 0 chose one."""
        return int(self.target) if self.target is not None else self.chosen

    def _power_step(self, h: np.ndarray) -> np.ndarray | None:
        dev = h - self.mu
        cumulative = (dev @ self.z) @ dev
        length = float(np.linalg.norm(cumulative))
        return cumulative / length if length > 0 else None

    def __call__(self, honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
        h, o = _rows(honest, own)
        if self.target is not None:
            if not int(self.target) < h.shape[0]:
                raise ValueError(f"mimic target must be in [0, {h.shape[0]}), got {self.target}")
            return np.tile(h[int(self.target)], (o.shape[0], 1))
        if self.t < self.warmup:
            avg = h.mean(axis=0)
            if self.t == 0:
                self.mu, self.z = avg, rng.standard_normal(h.shape[1])
                step = self._power_step(h)
                if step is not None:
                    self.z = step
            else:
                w = self.t / (self.t + 1.0)
                self.mu = w * self.mu + avg / (self.t + 1.0)
                step = self._power_step(h)
                if step is not None:
                    self.z = w * self.z + step / (self.t + 1.0)
            length = float(np.linalg.norm(self.z))
            if length > 0:
                self.z = self.z / length
            self.chosen = int(np.argmax(h @ self.z))
        self.t += 1
        if not self.chosen < h.shape[0]:
            raise ValueError(f"mimic's fixed target {self.chosen} is not among the {h.shape[0]} honest rows")
        return np.tile(h[self.chosen], (o.shape[0], 1))


RULE_CONTEXT = ("rule", "f", "rule_options", "norm_bound")
"""What a rule-aware attack gets from the runner, not from the config: the rule's base name (``spec.base_rule``),
its f, the run's rule options (with cclip's ``center``, the previous aggregate) and the norm bound of the input
validity check (rows above it get weight 0, so the attacker never sends them)."""

SEARCHES = ("grid", "byzfl")
GRID_POINTS = 10
"""The grid search's first phase: 0 and max_scale * 2^-8, ..., max_scale * 2^0."""
BYZFL_START, BYZFL_DELTA, BYZFL_RATIO = 0.0, 10.0, 0.8
"""ByzFL 0.0.11's line search (``Optimal_ALittleIsEnough``, ``Optimal_InnerProductManipulation``) defaults."""
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
TIE = 1e-9
"""Relative margin below which two objective values count as equal: the oracle's float noise (about 1e-15) on a
plateau, where the rule ignores the Byzantine rows, must not look like progress."""


def _better(y: float, best: float) -> bool:
    return y > best + TIE * abs(best)


def _check_search(search: str, evals: int, max_scale: float) -> None:
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    least = GRID_POINTS if search == "grid" else 1
    if isinstance(evals, bool) or not isinstance(evals, (int, np.integer)) or evals < least:
        raise ValueError(f"evals must be an integer >= {least} for search={search!r}, got {evals!r}")
    if isinstance(max_scale, bool) or not isinstance(max_scale, (int, float)) or not (
            math.isfinite(max_scale) and max_scale > 0):
        raise ValueError(f"max_scale must be a positive finite number, got {max_scale!r}")


def line_search(objective: Callable[[float], float], *, search: str = "grid", evals: int = 20,
                max_scale: float = 32.0) -> tuple[float, float]:
    r"""(s, objective(s)) for the best scale s >= 0 found in ``evals`` evaluations.

    ``"grid"``: the 10 points 0, max_scale * 2^k (k = -8..0), then golden-section search with the remaining
    evaluations on the interval between the best grid point's two neighbours (the objective jumps where the
    rule's choice changes, so the best point evaluated is kept, not the last). ``"byzfl"``: ByzFL 0.0.11's line
    search exactly (start 0, step 10, doubled on success during expansion; after the first failure the step
    shrinks by 0.8 per evaluation and only s_best + step is tried), which never looks below its first success
    (s = 10 when it already beats s = 0) and so misses the small scales that beat Krum; ``max_scale`` is not used.
    Values within a relative ``TIE`` (1e-9) of each other count as equal, and ties keep the earliest point (the
    smaller scale on the grid).
    """
    _check_search(search, evals, max_scale)
    if search == "byzfl":
        best_x, best_y, delta, left = BYZFL_START, objective(BYZFL_START), BYZFL_DELTA, evals - 1
        while left > 0:
            x = best_x + delta
            y = objective(x)
            left -= 1
            if _better(y, best_y):
                best_x, best_y, delta = x, y, delta * 2
            else:
                delta *= BYZFL_RATIO
                break
        while left > 0:
            x = best_x + delta
            y = objective(x)
            left -= 1
            if _better(y, best_y):
                best_x, best_y = x, y
            delta *= BYZFL_RATIO
        return best_x, best_y
    grid = [0.0] + [float(max_scale) * 2.0**k for k in range(-(GRID_POINTS - 2), 1)]
    values = [objective(s) for s in grid]
    top = max(values)
    k = next(i for i, y in enumerate(values) if not _better(top, y))
    best_x, best_y = grid[k], values[k]
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    left = evals - GRID_POINTS
    c, d = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    fc = fd = None
    while left > 0:
        if fc is None:
            fc, left = objective(c), left - 1
            if _better(fc, best_y):
                best_x, best_y = c, fc
            continue
        if fd is None:
            fd, left = objective(d), left - 1
            if _better(fd, best_y):
                best_x, best_y = d, fd
            continue
        if fc >= fd:
            hi, d, fd = d, c, fc
            c, fc = hi - GOLDEN * (hi - lo), None
        else:
            lo, c, fc = c, d, fd
            d, fd = lo + GOLDEN * (hi - lo), None
    return best_x, best_y


def _need_rule(name: str, rule: str | None) -> str:
    if rule is None:
        raise ValueError(f"attack {name!r} needs the aggregation rule (rule=, f=, rule_options=): the training "
                         "runner passes them; called directly, pass them yourself")
    return rule


def _capped(objective: Callable[[float], float], a: np.ndarray, p: np.ndarray,
            norm_bound: float | None) -> Callable[[float], float]:
    """The objective with -inf where the Byzantine row a + s p would fail the input validity check."""
    if norm_bound is None:
        return objective
    aa, ap, pp, bound = float(a @ a), float(a @ p), float(p @ p), float(norm_bound) ** 2

    def capped(s: float) -> float:
        return objective(s) if aa + 2 * s * ap + s * s * pp <= bound else -math.inf
    return capped


def _optimal(name: str, h: np.ndarray, o: np.ndarray, a: np.ndarray, p: np.ndarray, rule: str | None,
             f: int | None, rule_options: dict | None, norm_bound: float | None, search: str, evals: int,
             max_scale: float) -> tuple[np.ndarray, float]:
    from secrobust.train.oracle import RuleOracle

    _check_search(search, evals, max_scale)
    rule = _need_rule(name, rule)
    if not o.shape[0] or not h.shape[0]:
        return np.tile(a, (o.shape[0], 1)), 0.0
    oracle = RuleOracle(h, a, p, o.shape[0], rule, o.shape[0] if f is None else f, rule_options)
    s, _ = line_search(_capped(oracle.deviation, a, p, norm_bound), search=search, evals=evals,
                       max_scale=max_scale)
    return np.tile(a + s * p, (o.shape[0], 1)), s


def optimal_alie(honest: Any, own: Any, rng: np.random.Generator, *, search: str = "grid", evals: int = 20,
                 max_scale: float = 32.0, rule: str | None = None, f: int | None = None,
                 rule_options: dict | None = None, norm_bound: float | None = None) -> np.ndarray:
    r"""Optimal ALIE: every Byzantine row is :math:`\mu - z^*\sigma`, z* the scale in [0, max_scale] that
    maximises :math:`\lVert \mathrm{rule}(\text{honest}, \text{Byzantine}) - \mu\rVert`.

    ByzFL's ``Optimal_ALittleIsEnough`` (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
    Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023) on the ALIE of Baruch et al.
    (NeurIPS 2019); ByzFL sends :math:`\mu + \tau\sigma`, the same family with the opposite sign. The attacker
    knows the rule, its f and options (``RULE_CONTEXT``, filled by the runner) and evaluates the rule in float
    (``oracle.RuleOracle``: no fixed-point encoding and no pre-aggregation step). ``line_search`` says what
    ``search`` and ``evals`` do; scales whose rows would exceed ``norm_bound`` are not considered.
    """
    h, o = _rows(honest, own)
    rows, _ = _optimal("optimal-alie", h, o, h.mean(axis=0) if h.shape[0] else np.zeros(o.shape[1]),
                       -_sigma(h) if h.shape[0] else np.zeros(o.shape[1]), rule, f, rule_options, norm_bound,
                       search, evals, max_scale)
    return rows


def optimal_ipm(honest: Any, own: Any, rng: np.random.Generator, *, search: str = "grid", evals: int = 20,
                max_scale: float = 32.0, rule: str | None = None, f: int | None = None,
                rule_options: dict | None = None, norm_bound: float | None = None) -> np.ndarray:
    r"""Optimal IPM: every Byzantine row is :math:`-\varepsilon^*\mu`, epsilon* the scale in [0, max_scale] that
    maximises :math:`\lVert \mathrm{rule}(\text{honest}, \text{Byzantine}) - \mu\rVert`.

    ByzFL's ``Optimal_InnerProductManipulation`` (Allouah et al., AISTATS 2023) on the IPM of Xie, Koyejo,
    Gupta (UAI 2019); ByzFL's factor tau is epsilon here. Rule knowledge, evaluation and search as in
    ``optimal_alie``.
    """
    h, o = _rows(honest, own)
    mu = h.mean(axis=0) if h.shape[0] else np.zeros(o.shape[1])
    rows, _ = _optimal("optimal-ipm", h, o, np.zeros(o.shape[1]), -mu, rule, f, rule_options, norm_bound,
                       search, evals, max_scale)
    return rows


PERTURBATIONS = ("std", "unit-vec", "sign")


def _perturbation(h: np.ndarray, kind: str) -> np.ndarray:
    """Shejwalkar and Houmansadr's p: -sigma ("std"), -mu/||mu|| ("unit-vec") or -sign(mu) ("sign")."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {kind!r}")
    mu = h.mean(axis=0)
    if kind == "std":
        return -_sigma(h)
    if kind == "sign":
        return -np.sign(mu)
    length = float(np.linalg.norm(mu))
    return -mu / length if length > 0 else np.zeros_like(mu)


def min_max_gamma(honest: np.ndarray, p: np.ndarray) -> float:
    r"""The largest :math:`\gamma \ge 0` with :math:`\max_i \lVert \mu + \gamma p - x_i\rVert^2 \le
    \max_{i,j} \lVert x_i - x_j\rVert^2`, in closed form: each constraint is a convex quadratic in gamma
    that holds at 0 (:math:`\lVert x_i - \mu\rVert \le \max_j \lVert x_i - x_j\rVert`), so the feasible set
    is [0, min_i gamma_i] with gamma_i the larger root of constraint i (what the paper's binary search
    converges to). inf when p = 0."""
    dev = honest - honest.mean(axis=0)
    sq = np.einsum("ij,ij->i", honest, honest)
    bound = float(np.max(sq[:, None] + sq[None, :] - 2.0 * (honest @ honest.T)))
    pp = float(p @ p)
    if pp == 0:
        return math.inf
    q = dev @ p
    c = np.einsum("ij,ij->i", dev, dev) - bound
    return float(np.min((q + np.sqrt(np.maximum(q * q - pp * c, 0.0))) / pp))


def min_sum_gamma(honest: np.ndarray, p: np.ndarray) -> float:
    r"""The largest :math:`\gamma \ge 0` with :math:`\sum_i \lVert \mu + \gamma p - x_i\rVert^2 \le \max_i
    \sum_j \lVert x_i - x_j\rVert^2`, in closed form: the cross term vanishes (the x_i - mu sum to 0), so
    :math:`\gamma^2 h \lVert p\rVert^2 \le \max_i S_i - \sum_i \lVert x_i - \mu\rVert^2`. inf when p = 0."""
    dev = honest - honest.mean(axis=0)
    sq = np.einsum("ij,ij->i", honest, honest)
    sums = (sq[:, None] + sq[None, :] - 2.0 * (honest @ honest.T)).sum(axis=1)
    pp = float(p @ p)
    if pp == 0:
        return math.inf
    slack = float(np.max(sums)) - float(np.einsum("ij,ij->", dev, dev))
    return math.sqrt(max(slack, 0.0) / (honest.shape[0] * pp))


def _agr_agnostic(h: np.ndarray, o: np.ndarray, perturbation: str,
                  gamma: Callable[[np.ndarray, np.ndarray], float]) -> np.ndarray:
    if h.shape[0] < 2:
        return np.tile(h.mean(axis=0) if h.shape[0] else np.zeros(o.shape[1]), (o.shape[0], 1))
    p = _perturbation(h, perturbation)
    g = gamma(h, p)
    mu = h.mean(axis=0)
    return np.tile(mu if not math.isfinite(g) else mu + g * p, (o.shape[0], 1))


def min_max(honest: Any, own: Any, rng: np.random.Generator, *, perturbation: str = "std") -> np.ndarray:
    r"""Min-max: every Byzantine row is :math:`\mu + \gamma p` with the largest gamma whose row is no farther
    from any honest row than the two farthest honest rows are from each other (``min_max_gamma``).

    Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for
    Federated Learning" (NDSS 2021), the AGR-agnostic attack: the attacker knows the honest updates but not
    the rule. p (``perturbation``) is -sigma ("std", the default), -mu/||mu|| ("unit-vec") or -sign(mu)
    ("sign"). gamma is exact (closed form), where the paper binary-searches it.
    """
    h, o = _rows(honest, own)
    return _agr_agnostic(h, o, perturbation, min_max_gamma)


def min_sum(honest: Any, own: Any, rng: np.random.Generator, *, perturbation: str = "std") -> np.ndarray:
    r"""Min-sum: every Byzantine row is :math:`\mu + \gamma p` with the largest gamma whose sum of squared
    distances to the honest rows is at most the largest such sum of an honest row (``min_sum_gamma``).

    Shejwalkar, Houmansadr (NDSS 2021), AGR-agnostic, as ``min_max``.
    """
    h, o = _rows(honest, own)
    return _agr_agnostic(h, o, perturbation, min_sum_gamma)


DIRECTIONS = ("mean", "std", "sign")


def _unit(v: np.ndarray) -> np.ndarray:
    length = float(np.linalg.norm(v))
    return v / length if length > 0 else np.full(v.shape, 1.0 / math.sqrt(max(v.size, 1)))


def cclip_radius(honest_distances: np.ndarray, f: int, tau: float | None) -> float:
    r"""How far from the center the attacker puts its f rows: tau if it is fixed, else the largest clipping
    radius it can get from cclip's default tau (the median of all n distances to the center): with its rows
    at distance r that median is :math:`\tau(r)` and each row moves the next center by
    :math:`\min(r, \tau(r))/n`, at most :math:`\tau_{hi} = \tau(\infty)`; r is the smallest candidate that
    attains it (:math:`\tau_{hi}` itself, or the next honest distance when n is even)."""
    if tau is not None:
        return float(tau)
    if not f:
        return 0.0

    def median_with(r: float) -> float:
        return float(np.median(np.concatenate([honest_distances, np.full(f, r)])))

    high = median_with(math.inf)
    for r in [high, *np.sort(honest_distances[honest_distances > high]).tolist()]:
        if min(r, median_with(r)) >= high * (1.0 - 1e-12):
            return r
    return float(np.max(honest_distances))


def cclip_adaptive(honest: Any, own: Any, rng: np.random.Generator, *, direction: str = "mean",
                   rule: str | None = None, f: int | None = None, rule_options: dict | None = None,
                   norm_bound: float | None = None) -> np.ndarray:
    r"""Adaptive attack on centered clipping: every Byzantine row is :math:`v + r u`, at distance r from the
    clipping center v (the previous aggregate: the runner's cclip ``center``) along u, the unit vector of -mu
    ("mean", the default), -sigma ("std") or -sign(mu) ("sign").

    Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization" (ICML 2021), Section 4:
    a Byzantine row moves the clipped step :math:`\frac1n\sum_i \min(1, \tau/\lVert x_i - v\rVert)(x_i - v)` by at
    most :math:`\tau/n`, so the strongest attack on one round puts every Byzantine row at distance tau, where
    it is not clipped, all in one direction: a bias of :math:`f\tau/n` per round that the analysis bounds and
    that adds up over rounds when the direction stays the same (the Byzantines are consistent where honest noise
    is not). Assumes an omniscient attacker that knows tau and v; with a fixed ``tau`` in the rule options r is
    tau, with cclip's default tau (the median distance, which the Byzantine rows shift) r is ``cclip_radius``.
    With ``iterations`` > 1 it targets the first clipping step. Against another rule it sends the same rows
    (center 0 unless the options name one). r shrinks, if needed, so that the rows pass the validity check
    (``norm_bound``).
    """
    from secrobust.train.oracle import rule_arguments

    h, o = _rows(honest, own)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not o.shape[0] or not h.shape[0]:
        return np.zeros(o.shape)
    options, center = rule_arguments(rule or "cclip", rule_options)
    v = np.zeros(h.shape[1]) if center is None else center
    u = _unit(-h.mean(axis=0) if direction == "mean" else -_sigma(h) if direction == "std"
              else -np.sign(h.mean(axis=0)))
    r = cclip_radius(np.linalg.norm(h - v, axis=1), o.shape[0], options.get("tau"))
    if norm_bound is not None:
        vu, vv, bound = float(v @ u), float(v @ v), float(norm_bound) ** 2
        if vv + 2 * r * vu + r * r > bound:  # the largest r' <= r with ||v + r' u|| <= bound (0 if none)
            r = max(0.0, -vu + math.sqrt(max(vu * vu - vv + bound, 0.0)))
    return np.tile(v + r * u, (o.shape[0], 1))


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


def _ring_inputs(honest: Any, own: Any, frac_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(honest floats, own floats, y = E(honest)): the honest ring rows exactly as the engine encodes them."""
    h, o = _rows(honest, own)
    return h, o, ring.encode(h, frac_bits).reshape(h.shape)


def _rows_of(row: np.ndarray, f: int) -> np.ndarray:
    return np.tile(np.asarray(row, dtype=np.uint64), (f, 1))


def _pow2(k: np.ndarray) -> np.ndarray:
    """2^k mod 2^64 for integer k in [0, 63]."""
    return np.left_shift(np.uint64(1), np.asarray(k, dtype=np.uint64))


def _two_adic(x: np.ndarray) -> np.ndarray:
    """v(x): the number of trailing zero bits of each uint64 (64 for 0)."""
    low = x & (np.uint64(0) - x)
    return np.where(x == 0, 64, np.log2(np.maximum(low, np.uint64(1)).astype(np.float64)).astype(np.int64))


def _parity_kernel(y: np.ndarray) -> np.ndarray:
    r"""A non-empty set C of coordinates (as a boolean mask) with :math:`\sum_{c \in C} y_{ic}` of the same
    parity for every row i: a coordinate where all parities agree if there is one, else the first linear
    dependency over GF(2) among the columns of :math:`p_{ic} = (y_{ic} - y_{0c}) \bmod 2` (one exists among
    any h columns, since p has h - 1 non-zero rows)."""
    parity = (y & np.uint64(1)).astype(bool)
    p = parity[1:] ^ parity[0]
    mask = np.zeros(y.shape[1], dtype=bool)
    agree = np.flatnonzero(~p.any(axis=0))
    if agree.size:
        mask[agree[0]] = True
        return mask
    basis: dict[int, tuple[int, int]] = {}
    for c in range(y.shape[1]):
        v, comb = int(sum(1 << i for i in np.flatnonzero(p[:, c]).tolist())), 1 << c
        while v and (v.bit_length() - 1) in basis:
            bv, bc = basis[v.bit_length() - 1]
            v, comb = v ^ bv, comb ^ bc
        if not v:
            mask[[i for i in range(c + 1) if comb >> i & 1]] = True
            return mask
        basis[v.bit_length() - 1] = (v, comb)
    raise ValueError(f"no coordinate set of equal parity across the {y.shape[0]} honest rows (d = {y.shape[1]})")


def zero_wrap(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Zero wrap: every Byzantine row is :math:`x = E(\mu) + \sum_c 2^{k_c} e_c`, far from the honest rows,
    with every squared distance to them equal, in Z_2^64, to that of E(\mu).

    For a row y, :math:`\lVert x - y\rVert^2 - \lVert E(\mu) - y\rVert^2 = \sum_c 2^{k_c+1}(E(\mu)_c - y_c)
    + 2^{2k_c}`, which is 0 mod 2^64 when :math:`k_c \ge 32` and :math:`2^{k_c+1}(E(\mu)_c - y_c) \equiv 0`,
    i.e. :math:`k_c \ge 63 - v_c` with :math:`v_c` the 2-adic valuation of :math:`E(\mu)_c - y_{ic}` over all
    honest i. So :math:`k_c = \max(32, 63 - v_c)`: 2^32 (:math:`2^{32-F}`, 4096 real units at F = 20) on a
    coordinate where the honest rows agree, as in the README's ring-overflow example, up to 2^63 on the
    others. S1 saw the row at the honest centre, so distance-based rules kept it while every coordinate
    is at least :math:`2^{32-F}` away. In the aggregate the offset meets the weight's encoding
    :math:`\omega = \mathrm{round}(2^{32} w)`: :math:`2^{k_c}\omega` survives mod 2^64 unless
    :math:`\omega` has :math:`64 - k_c` trailing zero bits, so Multi-Krum's 1/m or the mean's 1/n moved
    the agreeing coordinates by hundreds to thousands, while Krum's weight 1 (:math:`\omega = 2^{32}`)
    cancels every offset and returns E(\mu).
    """
    h, o, y = _ring_inputs(honest, own, frac_bits)
    if not h.shape[0]:
        return np.zeros(o.shape, dtype=np.uint64)
    base = ring.encode_unchecked(h.mean(axis=0), frac_bits)
    v = _two_adic(np.bitwise_or.reduce(base - y, axis=0))
    return _rows_of(base + _pow2(np.maximum(32, 63 - np.minimum(v, 63))), o.shape[0])


def high_bits(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              *, scale: float = 10.0) -> np.ndarray:
    r"""High bits: every Byzantine row is :math:`x = E(t) + 2^{62}\,1_C`, target :math:`t = -s\mu` (norm
    capped at :math:`2^{30-F}`), C a coordinate set of equal parity across the honest rows.

    With :math:`b_i = E(t) - y_i`: :math:`\lVert x - y_i\rVert^2 = \lVert b_i\rVert^2 + 2^{63}\sum_{c\in C}
    b_{ic} + 2^{124}|C| \equiv \lVert b_i\rVert^2 + 2^{63}` mod 2^64 once :math:`\sum_C b_{ic}` is odd for
    every i (``_parity_kernel`` finds C, one unit of E(t) on C fixes the parity). As
    :math:`\lVert b_i\rVert^2 < 2^{63}`, every squared distance to an honest row reads negative, so Krum
    scored the row lowest and chose it with weight 1, encoded as 2^32; then :math:`2^{32}x \equiv
    2^{32}E(t)` (:math:`2^{94} \equiv 0`) and the revealed aggregate was t exactly (:math:`|E(t)_c| <
    2^{31}`). The same negative distances moved Multi-Krum and geomed. With s > 0 the target is gradient
    ascent on the honest mean.
    """
    h, o, y = _ring_inputs(honest, own, frac_bits)
    if not h.shape[0]:
        return np.zeros(o.shape, dtype=np.uint64)
    t = -float(scale) * h.mean(axis=0)
    cap = 2.0 ** (30 - frac_bits)
    length = float(np.linalg.norm(t))
    target = ring.encode_unchecked(t * min(1.0, cap / length) if length > 0 else t, frac_bits)
    chosen = _parity_kernel(y)
    first = int(np.flatnonzero(chosen)[0])
    if not (int(np.sum(target[chosen] - y[0, chosen])) & 1):
        target[first] += np.uint64(1)
    return _rows_of(target + np.where(chosen, np.uint64(1 << 62), np.uint64(0)), o.shape[0])


NORM_WRAP_RADIUS = math.sqrt(3.0) * 2.0**31


def norm_wrap(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Norm wrap: every Byzantine row is :math:`x = \mathrm{round}(-r\,\mu/\lVert\mu\rVert)` in scaled units,
    :math:`r = \sqrt 3\cdot 2^{31}` (:math:`\sqrt3\cdot 2^{31-F}`, about 3547 real units at F = 20).

    :math:`\lVert x\rVert^2 \approx 3\cdot 2^{62}` lies in :math:`[2^{63}, 2^{64})`, the upper half of the
    ring, so the squared norm computed mod 2^64 reads negative (about :math:`-2^{62}`): a negative norm,
    NaN after the square root of norm-clip and cclip. Its squared distances to the honest rows differ
    from :math:`\lVert x\rVert^2` by at most :math:`2r\cdot 2^{27} + 2^{54} < 2^{61}`, so they read
    negative too and Krum chose it. The true row points against the honest mean, thousands away.
    """
    h, o = _rows(honest, own)
    mu = h.mean(axis=0) if h.shape[0] else np.zeros(o.shape[1])
    length = float(np.linalg.norm(mu))
    direction = mu / length if length > 0 else np.full(o.shape[1], 1.0 / math.sqrt(max(o.shape[1], 1)))
    row = np.rint(-NORM_WRAP_RADIUS * direction).astype(np.int64).view(np.uint64)
    return _rows_of(row, o.shape[0])


def random_ring(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Random ring words: every Byzantine coordinate is uniform in Z_2^64.

    The ring analogue of the Gaussian attack of Blanchard et al. (NeurIPS 2017): the true vector has
    coordinates of order 2^62 (real :math:`2^{62-F}`), while its squared distances and norm mod 2^64 are
    essentially uniform, so about half of them read negative and the rest anywhere in the ring.
    """
    _, o = _rows(honest, own)
    return rng.integers(0, np.iinfo(np.uint64).max, size=o.shape, dtype=np.uint64, endpoint=True)


RING_MIX = ("high-bits", "zero-wrap", "norm-wrap", "random-ring")


def ring_overflow(honest: Any, own: Any, rng: np.random.Generator,
                  frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Ring overflow, the four ring attacks at once: Byzantine row j is the row of
    ``RING_MIX[(j + r) mod 4]`` (high-bits, zero-wrap, norm-wrap, random-ring) with r uniform in {0..3}
    each round.

    With f >= 4 every round carries all four constructions and over the rounds every Byzantine worker
    sends each of them (with f < 4, a random subset each round). Before the validity check each one
    alone fooled S1: negative distances that won Krum's choice (high-bits, norm-wrap, most random-ring
    rows) or distances of a row at the honest centre although thousands away (zero-wrap).
    """
    _, o = _rows(honest, own)
    out = np.empty(o.shape, dtype=np.uint64)
    shift = int(rng.integers(len(RING_MIX)))
    for k, name in enumerate(RING_MIX):
        rows = [j for j in range(o.shape[0]) if (j + shift) % len(RING_MIX) == k]
        if rows:
            out[rows] = RING_ATTACKS[name](honest, o[rows], rng, frac_bits)
    return out


ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "none": none,
    "sign-flip": sign_flip,
    "label-flip": label_flip,
    "gaussian": gaussian,
    "ipm": ipm,
    "alie": alie,
    "mimic": Mimic,
    "zero": zero,
    "large-norm": large_norm,
    "optimal-alie": optimal_alie,
    "optimal-ipm": optimal_ipm,
    "min-max": min_max,
    "min-sum": min_sum,
    "cclip-adaptive": cclip_adaptive,
}
"""Float attacks by name: functions, or classes (``Mimic``) whose instances keep state for one run."""

RING_ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "zero-wrap": zero_wrap,
    "high-bits": high_bits,
    "norm-wrap": norm_wrap,
    "random-ring": random_ring,
    "ring-overflow": ring_overflow,
}

_LABEL_FLIPPING = frozenset({"label-flip"})
_IGNORES_OWN = frozenset({"mimic", "ipm", "alie", "min-max", "min-sum"})


def ignores_own(name: str) -> bool:
    """True if attack ``name`` reads only the shape of ``own`` (its rows come from the honest updates), so the
    Byzantine workers need not train (``train.idle_byzantine``)."""
    return name in _IGNORES_OWN


def flips_labels(name: str) -> bool:
    """True if attack ``name`` poisons the Byzantine workers' labels before they train."""
    return name in _LABEL_FLIPPING


def is_ring_attack(name: str) -> bool:
    """True if attack ``name`` returns uint64 ring rows (called with ``frac_bits``, sent as ``ring_rows``)."""
    return name in RING_ATTACKS


def _keyword_only(name: str) -> dict[str, Any]:
    fn = _lookup(name)
    target = fn.__init__ if isinstance(fn, type) else fn
    return {
        p.name: p.default
        for p in inspect.signature(target).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def rule_context(name: str) -> tuple[str, ...]:
    """The ``RULE_CONTEXT`` keys attack ``name`` takes at call time (empty unless it is rule-aware): the runner
    passes them as keyword arguments every round."""
    return tuple(k for k in RULE_CONTEXT if k in _keyword_only(name))


def attack_options(name: str) -> dict[str, Any]:
    """The keyword options of attack ``name`` and their defaults (without the runner's ``rule_context``)."""
    return {k: v for k, v in _keyword_only(name).items() if k not in RULE_CONTEXT}


def make_attack(name: str, **options: Any) -> Attack | RingAttack:
    """Bind ``options`` to attack ``name``; ValueError on an unknown name or option. A stateful attack (a class
    in ``ATTACKS``) is a fresh instance: build one per run."""
    fn = _lookup(name)
    allowed = attack_options(name)
    context = sorted(set(options) & set(rule_context(name)))
    if context:
        raise ValueError(f"option(s) {context} of attack {name!r} come from the run (the rule, its f and options, "
                         f"the validity bound), not from the config; allowed: {sorted(allowed) or 'none'}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for attack {name!r}; allowed: {sorted(allowed) or 'none'}"
        )
    if isinstance(fn, type):
        return fn(**options)
    return functools.partial(fn, **options) if options else fn


def _lookup(name: str) -> Callable[..., np.ndarray]:
    try:
        return ATTACKS[name] if name in ATTACKS else RING_ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; allowed: {', '.join([*ATTACKS, *RING_ATTACKS])}") from None
