r"""Worker-level differential privacy: clipping by the workers, Gaussian noise by the servers.

Mechanism, per round:

1. Every honest worker clips the vector it sends to L2 norm at most C:
   :math:`x_i \leftarrow x_i \min(1, C / \lVert x_i\rVert)`.
2. Each of the two servers adds independent noise :math:`\mathcal N(0, \sigma^2 I_d)` to its share of
   the aggregate (``dp_noise_std=sigma`` in ``secrobust.aggregate``). The revealed aggregate carries
   :math:`\mathcal N(0, 2\sigma^2 I_d)`, but the guarantee must survive one server being
   dishonest, so it is accounted with the noise of one server alone: std sigma.

Adjacency is *zero-out* at the worker level (Kairouz et al., ICML 2021): neighbouring inputs
differ in one worker's row being replaced by zero, in every round. The L2 sensitivity Delta of
the aggregate :math:`\sum_i w_i x_i` is

- ``mean`` (fixed weights 1/n): :math:`\Delta = C/n`. Formal end to end: the weights are public
  constants and Byzantine rows do not change the bound.
- any other rule (weights chosen from the data, in the simplex): :math:`\Delta = 2C`, the
  diameter of the ball of radius C, *if* every row, Byzantine ones included, has norm <= C (and,
  for ``cclip``, whose output gives weight to the public centre, the centre too). The
  rule's weights (and S1's distances) are released without noise, so the epsilon reported for
  these rules covers the noisy aggregate vector only, not the weights.

A run is configured by the noise multiplier z; the servers then use :math:`\sigma = z \Delta`.
T rounds with every worker in every round are T compositions of the Gaussian mechanism with
noise multiplier z (sample rate 1); the privacy spent, epsilon at a given delta, comes from
Opacus' RDP accountant (Mironov 2017; Balle et al. 2020 conversion), not from hand-written
formulas.
"""

from __future__ import annotations

import numpy as np


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


def sensitivity(rule: str, n: int, clip: float) -> float:
    """L2 sensitivity of the aggregate under zero-out adjacency (see the module docstring)."""
    if n < 1 or clip <= 0:
        raise ValueError(f"need n >= 1 and clip > 0, got n={n}, clip={clip}")
    return clip / n if rule == "mean" else 2.0 * clip


def is_formal(rule: str) -> bool:
    """True if the reported epsilon covers everything the rule reveals (only fixed weights do)."""
    return rule == "mean"


def server_noise_std(rule: str, n: int, clip: float, noise_multiplier: float) -> float:
    r"""Per-server noise std :math:`\sigma = z\,\Delta` passed to the engine as ``dp_noise_std``."""
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    return noise_multiplier * sensitivity(rule, n, clip)


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


def epsilon_after(noise_multiplier: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds with multiplier z, by Opacus' RDP accountant."""
    accountant = PrivacyAccountant(noise_multiplier, sample_rate)
    accountant.step(rounds)
    return accountant.epsilon(delta)
