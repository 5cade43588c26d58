r"""L2 sensitivity of each rule's revealed aggregate, for worker-level DP (proofs: docs/privacy.md).

Adjacency is worker-level zero-out: neighbouring inputs differ in one worker's row being the zero
vector, in every round; every other input (other workers' rows, Byzantine ones included, dropouts,
the public center, the sampled cohort) is the same in both. The worker is honest: it clipped its row
to norm C, so its real row and its zero row both pass the input validity check (``norm_bound=C``),
and the number of aggregated rows is the same in both neighbours.

``sensitivity(rule, n, clip, ...)`` returns :math:`\Delta`, the largest L2 distance between the two
aggregates the rule can produce, for any rows of the other workers. ``n`` is a *lower bound* on the
number of rows the rule aggregates (after dropouts and rejections): the per-worker bounds divide by the
real count m >= n. A rule or option set without a bound raises ``NoSensitivityBound`` naming those
that have one; nothing falls back to 2C silently.

``sum_form(rule, ...)`` is True when the aggregate is a public point v plus (1/n) sum_i g(x_i) with a
bounded g: with a fixed denominator, the sampled Gaussian mechanism's analysis (Poisson sampling,
Opacus' RDP accountant) applies for add/remove adjacency, with ``sampled_term_bound``. For the mean and
norm-clip g(0) = 0, so a zeroed row adds what an absent one does and zero-out is the same relation; for
cclip g(v) = 0 at the public center but g(0) = clip_tau(-v) != 0, so under zero-out one worker moves the
sum by up to min(C, 2 tau), not tau.
"""

from __future__ import annotations

import math
from typing import Any

SHARES_SLACK = 1.0 + 2.0**-24
"""On shares ("weights"/"aggregate" modes) norm-clip's and cclip's factors are within 2^-25 relative of
the float ones (README, rules table): their per-worker bound is taken this much larger."""

PER_WORKER = ("mean", "norm-clip", "cclip", "trimmed-mean")
"""Rules whose sensitivity shrinks like 1/n: one worker's influence is bounded on its own."""

ABSOLUTE = ("median", "krum", "multi-krum", "mda", "geomed", "bulyan")
"""Rules with a bound that does not shrink with n (C for the median, 2C or more for the selection rules)."""

SIMPLEX = ("mean", "norm-clip", "krum", "multi-krum", "mda", "geomed")
"""Rules whose weights are non-negative and sum to at most 1, with no center: after any pre-aggregation
step (its weights handed back to the original rows stay so) the aggregate stays within norm C."""


class NoSensitivityBound(ValueError):
    """A rule (with these options) whose aggregate has no sensitivity bound we can prove."""


def bounded_rules() -> str:
    """The rules that have a bound, and the options they need, in words (for error messages)."""
    return ("mean; norm-clip with a public tau; cclip with a public tau and iterations = 1; trimmed-mean; "
            "median; krum, multi-krum, mda, geomed (2C); bulyan; any pre-aggregation step before mean, "
            "norm-clip, krum, multi-krum, mda or geomed (2C)")


def _refuse(rule: str, why: str) -> NoSensitivityBound:
    return NoSensitivityBound(f"rule {rule!r} has no sensitivity bound under DP: {why}. "
                              f"Rules with one: {bounded_rules()} (docs/privacy.md)")


def per_worker_bound(rule: str, clip: float, *, tau: float | None = None, iterations: int = 1,
                     reveal: str = "distances") -> float:
    r"""For the per-worker rules: the bound on one worker's term g(x) - g(0) before the division by n."""
    slack = SHARES_SLACK if reveal != "distances" else 1.0
    if rule == "mean" or rule == "trimmed-mean":
        return clip
    if rule == "norm-clip":
        if tau is None:
            raise _refuse(rule, "tau defaults to the median norm, which one worker moves (set a public tau)")
        return min(clip, tau) * slack
    if rule == "cclip":
        if tau is None:
            raise _refuse(rule, "tau defaults to the median distance to the center, which one worker moves "
                                "(set a public tau)")
        if iterations != 1:
            raise _refuse(rule, f"iterations = {iterations}: the later centers depend on every row")
        return min(clip, 2.0 * tau) * slack
    raise _refuse(rule, "its influence is not bounded per worker")


def sensitivity(rule: str, n: int, clip: float, *, f: int = 0, tau: float | None = None, iterations: int = 1,
                pre: str | None = None, reveal: str = "distances") -> float:
    r"""L2 sensitivity :math:`\Delta` of ``rule``'s aggregate under zero-out adjacency.

    ``n``: a lower bound on the number of aggregated rows; ``clip``: the norm C of every accepted row;
    ``f``: the rule's f (trimmed-mean and bulyan trim with it); ``tau``, ``iterations``: the rule's options
    (None: the rule's data-dependent default); ``pre``: a pre-aggregation step; ``reveal``: the mode.

    ====================  =====================================
    mean                  C / n
    norm-clip (tau)       min(C, tau) / n
    cclip (tau, 1 iter)   min(C, 2 tau) / n
    trimmed-mean          C / (n - 2f)
    median                C
    krum, multi-krum,     2C
    mda, geomed
    bulyan                2C sqrt((n - 2f) / (n - 4f))
    rule + pre step       2C (rules in ``SIMPLEX``)
    ====================  =====================================
    """
    if not (isinstance(n, int) and n >= 1) or not clip > 0 or f < 0:
        raise ValueError(f"need an integer n >= 1, clip > 0 and f >= 0, got n={n!r}, clip={clip!r}, f={f!r}")
    if tau is not None and not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")
    if pre is not None:
        if rule in SIMPLEX:
            return 2.0 * clip
        raise _refuse(f"{rule}+{pre}", "after a pre-aggregation step only rules whose weights lie in the simplex "
                                       "keep the 2C bound")
    if rule in ("mean", "norm-clip", "cclip"):
        return per_worker_bound(rule, clip, tau=tau, iterations=iterations, reveal=reveal) / n
    if rule == "trimmed-mean":
        if n - 2 * f < 1:
            raise _refuse(rule, f"n - 2f = {n - 2 * f} < 1 rows are kept")
        return clip / (n - 2 * f)
    if rule == "median":
        return clip
    if rule in ("krum", "multi-krum", "mda", "geomed"):
        return 2.0 * clip
    if rule == "bulyan":
        if n - 4 * f < 1:
            raise _refuse(rule, f"n - 4f = {n - 4 * f} < 1 values are kept per coordinate")
        return 2.0 * clip * math.sqrt((n - 2 * f) / (n - 4 * f))
    raise _refuse(rule, "unknown rule")


def rule_sensitivity(rule: str, n: int, clip: float, *, f: int = 0, options: dict[str, Any] | None = None,
                     pre: str | None = None, reveal: str = "distances") -> float:
    """``sensitivity`` with the rule's keyword options as the engine takes them (``tau``, ``iterations``;
    other options do not change the bound)."""
    options = options or {}
    return sensitivity(rule, n, clip, f=f, tau=options.get("tau"), iterations=int(options.get("iterations", 1)),
                       pre=pre, reveal=reveal)


def sum_form(rule: str, *, options: dict[str, Any] | None = None, pre: str | None = None) -> bool:
    """True if the aggregate is v + (1/n) sum_i g(x_i) with a public v and a bounded g: the mean and norm-clip
    with a public tau (v = 0, g(0) = 0), and cclip with a public tau, a public center v and one iteration
    (g(x) = clip_tau(x - v)), without a pre-aggregation step. Only these keep the sampled Gaussian mechanism's
    form under Poisson sampling: with a fixed denominator, adding or removing one worker adds or removes one
    term (``sampled_term_bound``)."""
    options = options or {}
    if pre is not None:
        return False
    if rule == "mean":
        return True
    if rule == "norm-clip":
        return options.get("tau") is not None
    if rule == "cclip":
        return options.get("tau") is not None and int(options.get("iterations", 1)) == 1
    return False


def sampled_term_bound(rule: str, clip: float, *, options: dict[str, Any] | None = None,
                       reveal: str = "distances") -> float:
    r"""Under client sampling (add/remove adjacency: one worker is in the population or not), the bound
    :math:`\Delta_g` on the norm of one worker's term g(x) of a ``sum_form`` rule: C for the mean,
    min(C, tau) for norm-clip, tau for cclip (:math:`\lVert\Pi_\tau(x - v)\rVert \le \tau`). The
    released aggregate v + (1/(qN)) sum g(x_i) then has sensitivity :math:`\Delta_g/(qN)`."""
    options = options or {}
    if not sum_form(rule, options=options):
        raise _refuse(rule, "under client sampling only a fixed-denominator sum of bounded per-worker terms "
                            "(mean; norm-clip or cclip with a public tau, one iteration) has the sampled Gaussian "
                            "mechanism's form")
    if rule == "cclip":
        tau = float(options["tau"])
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {tau!r}")
        return tau * (SHARES_SLACK if reveal != "distances" else 1.0)
    return per_worker_bound(rule, clip, tau=options.get("tau"), reveal=reveal)


def covers_everything(rule: str, *, reveal: str = "distances", pre: str | None = None) -> bool:
    """True if the epsilon covers everything the round releases beyond the cohort: the mean (whose weights are
    the public 1/n and which opens nothing), or any rule with ``reveal="aggregate"`` (nothing but the noisy
    aggregate is opened), without a pre-aggregation step (which opens the distances)."""
    return pre is None and (rule == "mean" or reveal == "aggregate")
