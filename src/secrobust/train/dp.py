r"""Worker-level differential privacy: clipping by the workers, Gaussian noise by the servers.

Mechanism, per round:

1. Every honest worker clips the vector it sends to L2 norm at most C:
   :math:`x_i \leftarrow x_i \min(1, C / \lVert x_i\rVert)`.
2. Each of the two servers adds independent noise :math:`\mathcal N(0, \sigma^2 I_d)` to its share of
   the aggregate (``dp_noise_std=sigma`` in ``secrobust.aggregate``). The revealed aggregate carries
   :math:`\mathcal N(0, 2\sigma^2 I_d)`, but the guarantee must survive one server being
   dishonest, so it is accounted with the noise of one server alone: std sigma.

Adjacency is *zero-out* at the worker level (Kairouz et al., ICML 2021): neighbouring inputs
differ in one worker's row being replaced by zero, in every round. The L2 sensitivity Delta of each
rule's aggregate is ``secrobust.privacy.sensitivity`` (proofs in docs/privacy.md): C/n for the mean,
min(C, tau)/n for norm-clip and min(C, 2 tau)/n for cclip with a public tau (and the public center,
one iteration), C/(n - 2f) for the trimmed mean, C for the median, 2C for Krum, Multi-Krum, MDA,
geomed and any rule after a pre-aggregation step. A rule without a bound (a data-dependent tau,
several cclip iterations) is refused under DP, naming the rules that have one. n is a lower bound on
the number of rows the servers aggregate: with every worker in the round, n - f (only a Byzantine
row can be rejected: an honest one is clipped to the validity check's bound C).

A run is configured by the noise multiplier z; the servers then use :math:`\sigma = z \Delta`.
With client sampling (``train.sample_rate = q < 1``) each worker joins a round independently with
probability q (Poisson sampling, the one the accountant's theorem covers: Mironov, Talwar, Zhang
2019). Rules whose aggregate is a fixed-denominator sum of bounded per-worker terms
(``secrobust.privacy.sum_form``: mean, norm-clip with a public tau, cclip with a public tau and center)
are amplified: the runner releases v + (1/(qN)) sum_{i in cohort} g(x_i) plus noise of std z Delta_g/(qN),
whatever the cohort's size (``cohort_noise_std``), for add/remove adjacency, and epsilon at delta comes
from Opacus' RDP accountant with that sample rate (Mironov 2017; Balle et al. 2020 conversion), not from
hand-written formulas. Every other rule with a bound runs sampled without amplification, composed over
the rounds a worker takes part in. Against a server, who sees the cohort, there is no amplification:
``epsilon_server`` composes the Gaussian mechanism over the rounds a worker actually took part in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from secrobust.privacy import (
    covers_everything,
    rule_sensitivity,
    sampled_term_bound,
    sum_form,
)


def clip_rows(updates: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Scale every row x to :math:`x \min(1, C/\lVert x\rVert)`.

    Returns the clipped rows and a boolean mask of the rows that were scaled down.
    """
    if clip <= 0:
        raise ValueError(f"clipping norm must be > 0, got {clip}")
    x = np.asarray(updates, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    scale = np.minimum(1.0, clip / np.maximum(norms, np.finfo(np.float64).tiny))
    return x * scale, (norms[..., 0] > clip)


def sensitivity(rule: str, n: int, clip: float, *, f: int = 0, options: dict[str, Any] | None = None,
                pre: str | None = None, reveal: str = "distances") -> float:
    """L2 sensitivity of the aggregate under zero-out adjacency: ``secrobust.privacy.rule_sensitivity``
    (raises ``NoSensitivityBound``, a ValueError naming the rules with a bound, for a rule without one).
    ``n`` is a lower bound on the number of aggregated rows."""
    return rule_sensitivity(rule, n, clip, f=f, options=options, pre=pre, reveal=reveal)


def is_formal(rule: str, reveal: str = "distances", pre: str | None = None) -> bool:
    """True if the reported epsilon covers everything the round releases: the mean (public weights 1/n, nothing
    opened), or any rule with ``reveal="aggregate"``, without a pre-aggregation step."""
    return covers_everything(rule, reveal=reveal, pre=pre)


def server_noise_std(rule: str, n: int, clip: float, noise_multiplier: float, **kwargs: Any) -> float:
    r"""Per-server noise std :math:`\sigma = z\,\Delta` passed to the engine as ``dp_noise_std``.

    Each of the two servers adds this much to its share; the accountant is told z, i.e. the noise of
    *one* server, so the guarantee survives the other server removing or revealing its own."""
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    return noise_multiplier * sensitivity(rule, n, clip, **kwargs)


def check_sampled_rule(rule: str, options: dict[str, Any] | None = None, pre: str | None = None) -> None:
    """Refuse, under DP with client sampling, a rule whose aggregate is not a fixed-denominator sum of bounded
    per-worker terms around a public point (the sampled Gaussian mechanism's form)."""
    if not sum_form(rule, options=options, pre=pre):
        label = rule if pre is None else f"{rule}+{pre}"
        raise ValueError(
            f"client sampling under DP needs a rule whose aggregate is a sum of bounded per-worker terms with a "
            f"fixed denominator (mean; norm-clip with a public tau; cclip with a public tau and one iteration; "
            f"without a pre-aggregation step); {label!r} is not (docs/privacy.md). Use train.sample_rate = 1 for it.")


def cohort_noise_std(rule: str, clip: float, noise_multiplier: float, cohort: int,
                     options: dict[str, Any] | None = None, reveal: str = "distances") -> float:
    r"""Per-server noise std for a sampled round whose engine call aggregates ``cohort`` rows.

    The engine returns v + (1/k) sum g(x_i) + noise (v = 0 but for cclip's center); the runner releases
    v + (k/(qN)) (out - v), so the released aggregate is v + (1/(qN)) sum g(x_i) plus noise of std
    z Delta_g/(qN) per server, the same whatever k: the sampled Gaussian mechanism with sensitivity
    Delta_g/(qN) and multiplier z (``privacy.sampled_term_bound``)."""
    if cohort < 1:
        raise ValueError(f"cohort must be >= 1, got {cohort}")
    return noise_multiplier * sampled_term_bound(rule, clip, options=options, reveal=reveal) / cohort


def poisson_cohort(n: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """The workers of one round under Poisson sampling: each joins independently with probability q."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    if sample_rate == 1:
        return np.arange(n)
    return np.flatnonzero(rng.random(n) < sample_rate)


class PrivacyAccountant:
    """Opacus' RDP accountant for T rounds of the Gaussian mechanism with multiplier z.

    ``step()`` once per round; ``epsilon(delta)`` is the privacy spent so far.
    """

    def __init__(self, noise_multiplier: float, sample_rate: float = 1.0) -> None:
        from opacus.accountants import RDPAccountant

        if noise_multiplier <= 0:
            raise ValueError(f"noise multiplier must be > 0 to account for privacy, got {noise_multiplier}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.rounds = 0
        self._accountant = RDPAccountant()

    def step(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.rounds += rounds

    def epsilon(self, delta: float) -> float:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if self.rounds == 0:
            return 0.0
        return float(self._accountant.get_epsilon(delta=delta))


def noise_for_epsilon(epsilon: float, delta: float, *, rounds: int, sample_rate: float, amplified: bool,
                      participation: int) -> float:
    """The noise multiplier z that spends ``epsilon`` at ``delta``, from Opacus' RDP accountant
    (``get_noise_multiplier``): over ``rounds`` steps at ``sample_rate`` for an amplified (sum_form, sampled)
    rule; otherwise over the ``participation`` rounds the most-sampled worker takes part in, at sample rate 1."""
    from opacus.accountants.utils import get_noise_multiplier

    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"need epsilon > 0 and delta in (0, 1), got {epsilon}, {delta}")
    steps, q = (rounds, sample_rate) if amplified else (participation, 1.0)
    if steps < 1:
        raise ValueError("no round to spend the privacy budget on")
    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps,
                                      accountant="rdp", epsilon_tolerance=0.005))


def epsilon_after(noise_multiplier: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds with multiplier z, by Opacus' RDP accountant."""
    accountant = PrivacyAccountant(noise_multiplier, sample_rate)
    accountant.step(rounds)
    return accountant.epsilon(delta)
