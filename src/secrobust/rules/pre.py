"""Pre-aggregation on the opened view: NNM, bucketing and ARC, composed with any rule S1 runs.

Each step replaces the updates x (n of them) by m mixed vectors y = M x, M (m x n) computed by S1 from the
view alone, runs the rule on y and hands back weights on x: the aggregate sum_a w_a y_a = sum_j (M^T w)_j x_j.
So no extra opening and nothing new on shares: the servers sum the shared x with the public M^T w.
The view of y follows from the view of x: with G_ij = (N_i + N_j - D_ij)/2 (N_i = ||x_i - v||^2, the norms
the view holds, v the public center), G_y = M G M^T, so ||y_a - v||^2 = (G_y)_aa when the rows of M sum to 1
and ||y_a - y_b||^2 = (G_y)_aa + (G_y)_bb - 2 (G_y)_ab; for rows that sum to 1 the distances alone suffice,
because (m_a - m_b) sums to 0 and c^T G c = -c^T D c / 2 for such c.

  nnm        y_i = mean of the n - f nearest neighbours of x_i, itself included (Allouah, Farhadkhani,
             Guerraoui, Gupta, Pinot, Stephan, AISTATS 2023); ties to the lower index.
  bucketing  a random permutation cut into buckets of s; y_b = mean of bucket b (Karimireddy, He, Jaggi,
             ICLR 2022); the rule runs on ceil(n/s) buckets with the same f (at most f buckets hold a
             Byzantine worker). The permutation is S1's fresh randomness (its test seed in simulations).
  arc        adaptive robust clipping (Allouah, Guerraoui, Gupta, Pinot, Stephan, NeurIPS 2024): the
             k = floor(2 (f/n) (n - f)) largest updates are clipped to the (k+1)-th largest norm; y_i = c_i x_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..primitives import prg
from .spec import PRE_KEYS, RuleSpec
from .view import DISTANCES, NORMS, Choice, View

PRE_STEPS = ("nnm", "bucketing", "arc")
DEFAULT_BUCKET = 2


@dataclass(frozen=True)
class PreStep:
    name: str
    s: int = DEFAULT_BUCKET
    seed: bytes | None = None


def split_pre(options: dict[str, Any]) -> tuple[PreStep | None, dict[str, Any]]:
    """(the pre-aggregation step named by ``pre=`` and ``s=``, the rule's own options); ValueError if bad."""
    rest = {k: v for k, v in options.items() if k not in PRE_KEYS}
    name = options.get("pre")
    if name is None:
        if "s" in options:
            raise ValueError("s (the bucket size) goes with pre='bucketing'")
        return None, rest
    if name not in PRE_STEPS:
        raise ValueError(f"pre must be one of {', '.join(repr(p) for p in PRE_STEPS)} (or None), got {name!r}")
    s = options.get("s", DEFAULT_BUCKET)
    if name != "bucketing" and "s" in options:
        raise ValueError(f"s (the bucket size) goes with pre='bucketing', not pre={name!r}")
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
        raise ValueError(f"the bucket size s must be a positive integer, got {s!r}")
    return PreStep(name, int(s)), rest


def check_pre_mode(step: PreStep | None, reveal: str) -> PreStep | None:
    """Pre-aggregation mixes on the opened view, so it runs with reveal="distances" only."""
    if step is not None and reveal != "distances":
        raise ValueError(f"pre={step.name!r} mixes the updates on the view S1 opens, so it runs with "
                         f"reveal='distances' only; got reveal={reveal!r}")
    return step


def prepare(spec: RuleSpec, options: dict[str, Any], reveal: str = "distances",
            seed: bytes | None = None) -> tuple[RuleSpec, dict[str, Any]]:
    """(spec after the pre-aggregation step ``options`` name, the rule's own options), checked against
    ``reveal``; ``seed`` is bucketing's permutation seed (a placeholder is fine for checks alone)."""
    step, rest = split_pre(options)
    return with_pre(spec, check_pre_mode(step, reveal), seed if seed is not None else bytes(16)), rest


def with_pre(spec: RuleSpec, step: PreStep | None, seed: bytes | None = None) -> RuleSpec:
    """``spec`` run on the mixed vectors of ``step``; its weights come back on the original updates."""
    if step is None:
        return spec
    if step.name == "arc" and spec.name == "cclip":
        raise ValueError("pre='arc' clips norms around 0 and cclip clips around its center: use one of them")
    step = replace(step, seed=seed if seed is not None else step.seed)
    base = spec

    def reveals(options: dict) -> tuple[str, ...]:
        return pre_reveals(step.name, base.reveals(options))

    def choose(view: View, n: int, f: int, **options: Any) -> Choice:
        m, mixed = mix(step, view, n, f)
        inner = base.choose(mixed, m.shape[0], f, **options)
        return Choice(m.T @ inner.weights, inner.center_weight)

    def min_n(f: int) -> int:
        inner = base.min_n(f)
        return step.s * (inner - 1) + 1 if step.name == "bucketing" else inner

    what = f"{step.name} (s={step.s})" if step.name == "bucketing" else step.name
    return replace(spec, choose=choose, reveals=reveals, min_n=min_n, option_names=base.options(),
                   requirement=f"{base.requirement} after {what}" if step.name == "bucketing" else base.requirement)


def pre_reveals(step: str, own: tuple[str, ...]) -> tuple[str, ...]:
    """What S1 opens for the rule's own view ``own`` after ``step``: the step's own input (D for nnm, the
    norms for arc), and whatever the mixed view needs: distances of averages (rows of M sum to 1) follow from
    D alone, norms of averages need the Gram matrix (D and the norms), ARC's clipped norms need the norms
    alone and its clipped distances the Gram matrix."""
    needs = set(own)
    if step == "nnm":
        needs.add(DISTANCES)
    if step == "arc":
        needs.add(NORMS)
        if DISTANCES in own:
            needs.add(NORMS)
    elif NORMS in own:
        needs.add(DISTANCES)
    return tuple(k for k in (DISTANCES, NORMS) if k in needs)


def _gram(view: View, n: int) -> np.ndarray | None:
    """G_ij = <x_i - v, x_j - v> from the norms and distances, when the view holds both."""
    if view.norms is None or view.distances is None:
        return None
    return 0.5 * (view.norms[:, None] + view.norms[None, :] - view.distances)


def mix(step: PreStep, view: View, n: int, f: int) -> tuple[np.ndarray, View]:
    """(M, the view of y = M x) for the step on this view."""
    if step.name == "nnm":
        m = nnm_matrix(view.need(DISTANCES), f)
    elif step.name == "bucketing":
        m = bucket_matrix(n, step.s, step.seed)
    else:
        m = np.diag(arc_factors(view.need(NORMS), f))
    g = _gram(view, n)
    if g is not None:
        gy = m @ g @ m.T
        diag = np.diagonal(gy).copy()
        dist = np.maximum(diag[:, None] + diag[None, :] - 2.0 * gy, 0.0)
        np.fill_diagonal(dist, 0.0)
        return m, View(distances=dist, norms=np.maximum(diag, 0.0))
    if step.name == "arc":
        return m, View(norms=np.diagonal(m) ** 2 * view.need(NORMS))
    if view.distances is None:
        return m, View()
    d = view.distances
    k = m @ d @ m.T
    q = np.diagonal(k).copy()
    dist = np.maximum(k - 0.5 * (q[:, None] + q[None, :]), 0.0)
    np.fill_diagonal(dist, 0.0)
    return m, View(distances=dist)


def nnm_matrix(distances: np.ndarray, f: int) -> np.ndarray:
    """Row i averages the n - f nearest neighbours of x_i (itself first among equals)."""
    n = distances.shape[0]
    m = np.zeros((n, n))
    for i in range(n):
        order = np.lexsort((np.arange(n) != i, np.arange(n), distances[i]))
        m[i, order[: n - f]] = 1.0 / (n - f)
    return m


def bucket_matrix(n: int, s: int, seed: bytes | None) -> np.ndarray:
    """Buckets of s consecutive workers of a uniform permutation drawn from ``seed`` (AES-CTR keystream)."""
    if seed is None:
        raise ValueError("bucketing needs the rule server's seed for its permutation")
    perm = _permutation(n, seed)
    buckets = math.ceil(n / s)
    m = np.zeros((buckets, n))
    for b in range(buckets):
        members = perm[b * s:(b + 1) * s]
        m[b, members] = 1.0 / len(members)
    return m


def _permutation(n: int, seed: bytes) -> np.ndarray:
    """Fisher-Yates with 64-bit keystream words (modulo bias below n / 2^64)."""
    words = prg.ring_stream(seed, "bucketing-permutation", max(n, 1))
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(words[i] % np.uint64(i + 1))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def arc_factors(norms_sq: np.ndarray, f: int) -> np.ndarray:
    """c_i = min(1, tau / ||x_i||) with tau the (k+1)-th largest norm, k = floor(2 (f/n) (n - f))."""
    n = norms_sq.shape[0]
    norms = np.sqrt(np.maximum(norms_sq, 0.0))
    k = min(int(math.floor(2.0 * f / n * (n - f))), n - 1)
    if k == 0:
        return np.ones(n)
    tau = np.sort(norms)[::-1][k]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > tau, tau / np.where(norms > 0, norms, 1.0), 1.0)
