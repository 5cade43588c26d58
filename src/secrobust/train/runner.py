r"""One training run: n workers, f of them Byzantine, aggregated by the engine every round.

Round t, with global parameters :math:`\theta_t \in \mathbb R^d`:

1. Every worker i starts from :math:`\theta_t` and takes K local SGD steps on mini-batches of its
   own data (K = 1: one stochastic gradient); its update is the average gradient along the way,
   :math:`u_i = (\theta_t - \theta_{t,K}^i)/(K\eta_{local})`. With worker momentum beta it sends
   :math:`m_i \leftarrow \beta m_i + (1-\beta) u_i` instead; with DP the sent vector is clipped to
   norm C. An honest worker also scales its vector into the encoder's range
   (``secrobust.max_norm(F, d)``, about 2^(27-F)), which the honest encoder would otherwise reject.
2. The f Byzantine workers (a random subset fixed for the run) compute the same thing on their
   own data (labels flipped for the label-flip attack), then replace it by
   ``attack(honest_rows, own_rows, rng)``; their float rows are marked ``unchecked`` for the engine.
   A rule-aware attack also gets the rule (``spec.base_rule``), f, this round's rule options (cclip's center
   included) and the validity check's norm bound (``attacks.RULE_CONTEXT``).
   A ring attack (``attacks.is_ring_attack``) returns uint64 ring elements instead,
   ``attack(honest_rows, own_rows, rng, F)``, sent as ``ring_rows`` (secure and plaintext alike).
3. ``secrobust.aggregate`` (secure) or ``secrobust.plain_aggregate`` (plaintext) applies the
   rule, with per-server DP noise std :math:`\sigma = z\Delta` if DP is on. The input validity
   check rejects (weight 0) every worker whose ring vector has norm above the encoder's bound (with
   DP clipping, above C: ``norm_bound``); the run counts them.
4. :math:`\theta_{t+1} = \theta_t - \eta\, a_t` with a_t the revealed aggregate.

Test accuracy is measured at round 0, every ``eval_every`` rounds and after the last round. If
the parameters become non-finite the run stops, is marked diverged, and its last accuracy is
carried to the remaining evaluation points.

Randomness: the data seed drives the train/test split and partition; the training seed drives
the model's initialisation, the Byzantine subset, the mini-batches, the attacks and the
engine's per-round ``insecure_test_seed`` (a simulation: every party runs here). Secure and plaintext runs
with equal seeds therefore see identical inputs in round 0, and identical inputs in every round as long
as the revealed aggregates agree. An injected deployment (``secure_aggregate``) gets no seed: its servers
draw their masks, validity projections and DP noise fresh, so DP runs over it match in distribution only.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from secrobust.rules.pre import DEFAULT_BUCKET, bucket_matrix
from secrobust.rules.cohort import DEFAULT_MIN_PARTICIPANTS
from secrobust.rules.registry import get_rule
from secrobust.train.attacks import (
    flips_labels,
    ignores_own,
    is_ring_attack,
    make_attack,
    rule_context,
)
from secrobust.train.config import DataConfig, RunSpec, TrainConfig
from secrobust.train.data import Dataset, flip_labels, load_dataset, partition, partition_iid
from secrobust.train.dp import (
    PrivacyAccountant,
    check_sampled_rule,
    clip_rows,
    cohort_noise_std,
    epsilon_after,
    is_formal,
    noise_for_epsilon,
    poisson_cohort,
    server_noise_std,
)
from secrobust.errors import RoundAborted
from secrobust.privacy import per_worker_bound, sampled_term_bound, sum_form
from secrobust.train.models import FlatAdapter, build_model
from secrobust.updates import carried_center

ENCODER_MARGIN = 0.999


@dataclass
class RunResult:
    """What one run produced. ``weights[t]`` are the public weights the rule chose in round t;
    ``rejected[t]`` is how many workers the input validity check rejected in round t
    (``rejected_honest`` of them honest, over the whole run)."""

    spec: RunSpec
    dataset: str
    dim: int
    byzantine: list[int]
    history: list[dict[str, Any]]
    weights: np.ndarray
    epsilon: float | None
    seconds: float
    aggregate_seconds: float
    diverged: bool
    rescaled_rows: int = 0
    clipped_rows: int = 0
    rescaled_centers: int = 0
    """Rounds whose cclip center (the previous aggregate) had to be scaled into the encoder's range."""
    rejected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rejected_honest: int = 0
    epsilon_server: float | None = None
    """Epsilon against each server, who sees the cohort: no amplification by sampling (equal to ``epsilon``
    when every worker takes part in every round)."""
    cohort_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """How many workers took part in each round (all of them unless ``train.sample_rate < 1``)."""
    over_f_rounds: int = 0
    """Sampled rounds whose cohort held more Byzantine workers than the rule was told (``cohort_f``): outside
    the rule's robustness guarantee."""
    noise_multiplier: float | None = None
    """z the servers' noise was calibrated with (chosen by Opacus when the config gives a target ``dp.epsilon``)."""
    copied: int | None = None
    """The honest worker a copying attack (mimic) copied, as an index into the honest workers in id order (what
    ``attack_options.mimic.target`` sets); None for every other attack. A non-IID cell under mimic depends on it."""

    @property
    def final_accuracy(self) -> float:
        return float(self.history[-1]["accuracy"])

    @property
    def byzantine_weight(self) -> float:
        """Mean over rounds of the total weight the rule gave to Byzantine rows (None if the weights were
        never revealed: reveal="aggregate")."""
        if not self.byzantine or len(self.weights) == 0:
            return 0.0
        value = float(self.weights[:, self.byzantine].sum(axis=1).mean())
        return None if np.isnan(value) else value

    def record(self) -> dict[str, Any]:
        """The JSON-lines record of this run."""
        s = self.spec
        return {
            "run_id": s.run_id,
            "rule": s.rule,
            "attack": s.attack,
            "f": s.f,
            "secure": s.secure,
            "seed": s.seed,
            "data_seed": s.data_seed,
            "dataset": self.dataset,
            "model": s.model.name,
            "workers": s.train.workers,
            "rounds": s.train.rounds,
            "dim": self.dim,
            "byzantine": self.byzantine,
            "final_accuracy": self.final_accuracy,
            "byzantine_weight": self.byzantine_weight,
            "weights_sha256": hashlib.sha256(np.ascontiguousarray(self.weights).tobytes()).hexdigest(),
            "epsilon": self.epsilon,
            "epsilon_server": self.epsilon_server,
            "delta": s.dp.delta if self.epsilon is not None else None,
            "noise_multiplier": self.noise_multiplier,
            "copied": self.copied,
            "over_f_rounds": self.over_f_rounds,
            "target_epsilon": s.dp.epsilon or None,
            "dp_formal": is_formal(s.base_rule, s.reveal, s.pre) if self.epsilon is not None else None,
            "sample_rate": s.train.sample_rate,
            "mean_cohort": float(self.cohort_sizes.mean()) if len(self.cohort_sizes) else None,
            "diverged": self.diverged,
            "rescaled_rows": self.rescaled_rows,
            "clipped_rows": self.clipped_rows,
            "rescaled_centers": self.rescaled_centers,
            "rejected_total": int(self.rejected.sum()),
            "rejected_honest": self.rejected_honest,
            "seconds": round(self.seconds, 3),
            "aggregate_seconds": round(self.aggregate_seconds, 3),
            "history": self.history,
            "spec": s.to_dict(),
        }


SecureAggregate = Callable[..., Any]
"""What a secure run calls every round: ``fn(updates, rule, f, **kwargs)`` with the keyword arguments of
``secrobust.aggregate`` except ``insecure_test_seed`` (frac_bits, dp_noise_std, unchecked, rule options, and ``ring_rows`` under a
ring attack only), returning a result with ``aggregate``, ``weights`` and optionally ``rejected``.
``secrobust.aggregate`` (all parties in this process) by default;
``LocalDeployment.aggregate`` runs the same round over gRPC, one OS process per party."""


def engine_aggregate(updates: np.ndarray, rule: str, f: int, *, secure: bool,
                     secure_aggregate: SecureAggregate | None = None, **kwargs: Any) -> Any:
    """Call ``secure_aggregate`` (default ``secrobust.aggregate``) for a secure run, or
    ``secrobust.plain_aggregate`` for a plaintext one (``secure_aggregate`` is then not used)."""
    from secrobust import api
    from secrobust.params import LikelyTransposed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LikelyTransposed)      # rows are workers here by construction
        if not secure:
            return api.plain_aggregate(updates, rule=rule, f=f, **kwargs)
        if secure_aggregate is None:
            return api.aggregate(updates, rule, f, **kwargs)
        kwargs.pop("insecure_test_seed", None)  # a deployment draws every seed fresh; only simulations fix them
        return secure_aggregate(updates, rule, f, **kwargs)


def engine_max_norm(frac_bits: int, d: int) -> float:
    """The largest L2 norm the engine's honest encoder accepts (``secrobust.max_norm``)."""
    from secrobust.primitives import ring

    return float(ring.max_norm(frac_bits, d))


def byzantine_inputs(
    attack: Callable[..., np.ndarray],
    name: str,
    sent: np.ndarray,
    byzantine: list[int],
    honest: np.ndarray,
    rng: np.random.Generator,
    frac_bits: int,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Put the attack's rows in place and return the engine's keyword arguments for them.

    A float attack overwrites ``sent[byzantine]`` and the rows go ``unchecked``; a ring attack's uint64 rows
    go as ``ring_rows`` {worker: row} (the engine ignores those workers' float rows, zeroed here). ``context``
    (``attacks.RULE_CONTEXT``: rule, f, rule options, validity bound) goes to a rule-aware float attack, whose
    ``attacks.rule_context(name)`` names the keys it takes."""
    if not byzantine:
        return {"unchecked": ()}
    if not is_ring_attack(name):
        wanted = rule_context(name)
        extra = {k: v for k, v in (context or {}).items() if k in wanted}
        sent[byzantine] = attack(sent[honest], sent[byzantine], rng, **extra)
        return {"unchecked": tuple(byzantine)}
    rows = attack(sent[honest], sent[byzantine], rng, frac_bits)
    sent[byzantine] = 0.0
    return {"unchecked": (), "ring_rows": {w: rows[k] for k, w in enumerate(byzantine)}}


def round_seed(seed: int, t: int) -> int:
    """The engine's seed for round t of a run with training seed ``seed`` (63-bit, deterministic)."""
    state = np.random.SeedSequence([seed, t, 0x5EC]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y), 4096):
            logits = model(x[start : start + 4096])
            target = y[start : start + 4096]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    model.train()
    return correct / len(y), loss / len(y)


def run(
    spec: RunSpec,
    *,
    dataset: Dataset | None = None,
    on_round: Callable[[int], None] | None = None,
    secure_aggregate: SecureAggregate | None = None,
) -> RunResult:
    """Train once as ``spec`` says and return the history, the chosen weights and the privacy spent.

    ``secure_aggregate`` replaces ``secrobust.aggregate`` in a secure run (e.g. ``dep.aggregate`` of a
    ``secrobust.deploy.local.LocalDeployment``: the same round over gRPC); a plaintext run ignores it.
    The global torch RNG (dropout) is seeded from the training seed for the run and restored after it
    (``model.init = "torch-seed"``: seeded with the seed itself, and the model drawn from it first).
    """
    dropout_seed = int(np.random.SeedSequence(spec.seed).spawn(6)[5].generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed if spec.model.init == "torch-seed" else dropout_seed)
        return _run(spec, dataset=dataset, on_round=on_round, secure_aggregate=secure_aggregate)


def copied_worker(spec: RunSpec, *, dataset: Dataset | None = None) -> int | None:
    """The honest worker ``spec``'s copying attack copies (``RunResult.copied``), from its round 0 alone: mimic
    fixes its target there, and no round-0 draw depends on the run's length. For records written before
    ``copied`` was."""
    return run(replace(spec, train=replace(spec.train, rounds=1, eval_every=1)), dataset=dataset).copied


def harness_bucket_size(spec: RunSpec) -> int | None:
    """s for a coordinate-wise rule with bucketing ("median+bucketing"), else None. The engine's bucketing mixes
    on the view S1 opens, which a coordinate-wise rule (on shares, reveal="aggregate") does not have; the harness
    then averages the buckets itself and the rule runs on the ceil(n/s) bucket means (``rules.pre.bucket_matrix``,
    the permutation drawn from the round's seed)."""
    from secrobust.circuits.coordinatewise import COORDINATEWISE_RULES

    if spec.pre != "bucketing" or spec.base_rule not in COORDINATEWISE_RULES:
        return None
    return int(spec.rule_options.get("s", DEFAULT_BUCKET))


def worker_parts(labels: np.ndarray, n: int, byzantine: list[int], data: DataConfig,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Each worker's example indices. ``data.split = "all"``: the partition among all n workers. "honest": the
    partition among the h = n - f honest workers (in index order), and Byzantine worker k (k-th in index order)
    gets part k mod h of an IID split into h parts, as in Karimireddy, He, Jaggi's code, where the Byzantine
    workers hold no share of the heterogeneous split."""
    if data.split == "all":
        return partition(labels, n, data.partition, rng, alpha=data.alpha)
    honest = [i for i in range(n) if i not in set(byzantine)]
    parts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    for i, part in zip(honest, partition(labels, len(honest), data.partition, rng, alpha=data.alpha)):
        parts[i] = part
    if byzantine:
        shares = partition_iid(len(labels), len(honest), rng)
        for k, i in enumerate(byzantine):
            parts[i] = shares[k % len(honest)]
    return parts


def _run(
    spec: RunSpec,
    *,
    dataset: Dataset | None,
    on_round: Callable[[int], None] | None,
    secure_aggregate: SecureAggregate | None,
) -> RunResult:
    started = time.perf_counter()
    tc, n, f = spec.train, spec.train.workers, spec.f
    if not 0 <= f < n:
        raise ValueError(f"need 0 <= f < workers, got f={f}, workers={n}")
    if dataset is None:
        dataset = load_dataset(
            spec.data.dataset,
            seed=spec.data_seed,
            test_fraction=spec.data.test_fraction,
            fallback=None if spec.data.fallback == "none" else spec.data.fallback,
        )

    # spawn(5)[:4] equals spawn(4): adding the cohort's stream left the other streams of earlier runs unchanged
    init_seq, byz_seq, batch_seq, attack_seq, cohort_seq = np.random.SeedSequence(spec.seed).spawn(5)
    byzantine = sorted(int(i) for i in np.random.default_rng(byz_seq).choice(n, size=f, replace=False))
    parts = worker_parts(dataset.y_train, n, byzantine, spec.data, np.random.default_rng(spec.data_seed))
    bucket_size = harness_bucket_size(spec)
    if bucket_size is not None and (spec.dp.enabled or tc.sample_rate < 1 or is_ring_attack(spec.attack)):
        raise ValueError(f"{spec.rule!r}: the harness's bucketing of a coordinate-wise rule runs without DP, client "
                         "sampling or ring attacks")
    idle = tc.idle_byzantine and ignores_own(spec.attack)
    is_byz = np.zeros(n, dtype=bool)
    is_byz[byzantine] = True
    honest = np.flatnonzero(~is_byz)
    batch_rng = np.random.default_rng(batch_seq)
    attack_rng = np.random.default_rng(attack_seq)
    cohort_rng = np.random.default_rng(cohort_seq)
    attack = make_attack(spec.attack, **spec.attack_options)

    x_train = torch.from_numpy(dataset.x_train)
    y_honest = torch.from_numpy(dataset.y_train)
    y_flipped = torch.from_numpy(flip_labels(dataset.y_train, dataset.n_classes))
    x_test = torch.from_numpy(dataset.x_test)
    y_test = torch.from_numpy(dataset.y_test)

    model = build_model(
        spec.model.name,
        dataset.input_shape,
        dataset.n_classes,
        hidden=spec.model.hidden,
        seed=None if spec.model.init == "torch-seed" else int(init_seq.generate_state(1)[0]),
    )
    adapter = FlatAdapter(model)
    d = adapter.dim
    theta = adapter.get()
    momentum = np.zeros((n, d))
    encoder_bound = ENCODER_MARGIN * engine_max_norm(tc.frac_bits, d)

    dp = spec.dp
    q = tc.sample_rate
    # the cohorts do not depend on the data: drawn up front, they fix how often each worker can take part
    cohorts = [poisson_cohort(n, q, cohort_rng) for _ in range(tc.rounds)]
    participation_bound = int(np.bincount(np.concatenate(cohorts), minlength=n).max()) if tc.rounds else 0
    # with sampling under DP a sum_form rule releases a fixed-denominator sum over the cohort, amplified by the
    # sampling (docs/privacy.md); any other rule is a Gaussian mechanism per round, composed over the rounds a
    # worker takes part in, without amplification
    amplified = dp.enabled and q < 1 and sum_form(spec.base_rule, options=dict(spec.rule_options), pre=spec.pre)
    if dp.enabled and dp.epsilon > 0:
        z = noise_for_epsilon(dp.epsilon, dp.delta, rounds=tc.rounds, sample_rate=q, amplified=amplified,
                              participation=participation_bound)
        dp = replace(dp, epsilon=0.0, noise_multiplier=z)
    noisy = dp.enabled and dp.noise_multiplier > 0
    fixed_denominator = noisy and amplified
    sigma = 0.0
    if noisy and q == 1:
        # every worker takes part; only a Byzantine row can be rejected (an honest one is clipped to the bound C),
        # so the servers aggregate at least n - f rows: the denominator of the per-worker bounds
        sigma = server_noise_std(spec.base_rule, n - f, dp.clip, dp.noise_multiplier, f=f,
                                 options=dict(spec.rule_options), pre=spec.pre, reveal=spec.reveal)
    if fixed_denominator:
        check_sampled_rule(spec.base_rule, dict(spec.rule_options), spec.pre)
        if f and is_ring_attack(spec.attack):
            raise ValueError(f"attack {spec.attack!r} sends ring elements the validity check rejects, which would change "
                             "the fixed denominator of a sampled DP round; use train.sample_rate = 1 for ring attacks")
    elif noisy and q < 1:
        # the rule must have a bound at all (refused with the rules that have one otherwise)
        server_noise_std(spec.base_rule, max(1, n - f), dp.clip, dp.noise_multiplier, f=f,
                         options=dict(spec.rule_options), pre=spec.pre, reveal=spec.reveal)
    accountant = PrivacyAccountant(dp.noise_multiplier, q) if fixed_denominator or (noisy and q == 1) else None
    # the smallest cohort the rule and the servers accept: a sampled DP round is padded up to it with rows that add
    # nothing to its fixed-denominator sum (zero, or cclip's center); any other sampled round below it is skipped
    rule_minimum = get_rule(spec.base_rule).minimum
    min_cohort = DEFAULT_MIN_PARTICIPANTS
    while min_cohort < rule_minimum(cohort_f(f, n, min_cohort, q)):
        min_cohort += 1
    participation = np.zeros(n, dtype=np.int64)
    cohort_sizes = np.zeros(tc.rounds, dtype=np.int64)

    weights = np.zeros((tc.rounds, n))
    rejected = np.zeros(tc.rounds, dtype=np.int64)
    rejected_honest = 0
    history: list[dict[str, Any]] = []
    center = np.zeros(d)
    aggregate_seconds, rescaled, clipped, diverged = 0.0, 0, 0, False
    rescaled_centers = 0
    aborted: list[int] = []
    over_f = 0
    byz_since_eval: list[float] = []
    rejected_since_eval: list[int] = []

    # a server sees the cohort, so against it only zero-out means anything: cclip's zeroed row adds clip_tau(-v),
    # and its term moves by up to min(C, 2 tau) where the noise is scaled to tau (docs/privacy.md, "Two figures")
    server_z = dp.noise_multiplier
    if fixed_denominator:
        server_z *= (sampled_term_bound(spec.base_rule, dp.clip, options=dict(spec.rule_options), reveal=spec.reveal)
                     / per_worker_bound(spec.base_rule, dp.clip, tau=spec.rule_options.get("tau"),
                                        reveal=spec.reveal))

    def spent() -> float:
        """Epsilon so far against an observer of the released models: amplified for a sum_form rule under
        sampling, else composed over the rounds the most-sampled honest worker took part in."""
        if accountant is not None:
            return accountant.epsilon(dp.delta)
        return server_epsilon(server_z, participation[honest], dp.delta)

    def skip_round(t: int, refused: int) -> None:
        """A round that releases nothing (too small a cohort, or aborted by the servers): the model stays."""
        weights[t] = 0.0
        rejected[t] = refused
        byz_since_eval.append(0.0)
        rejected_since_eval.append(refused)
        aborted.append(t)
        if on_round is not None:
            on_round(t + 1)
        if (t + 1) % tc.eval_every == 0 or t + 1 == tc.rounds:
            log_eval(t + 1)

    def log_eval(t: int) -> None:
        acc, loss = evaluate(model, x_test, y_test)
        entry: dict[str, Any] = {
            "round": t,
            "accuracy": acc,
            "loss": loss if np.isfinite(loss) else None,
            "byzantine_weight": (float(np.mean(byz_since_eval)) if byz_since_eval and not np.isnan(byz_since_eval).any()
                                 else None),
            "rejected": int(sum(rejected_since_eval)),
        }
        if noisy:
            entry["epsilon"] = spent()
        history.append(entry)
        byz_since_eval.clear()
        rejected_since_eval.clear()

    injected = {} if secure_aggregate is None else {"secure_aggregate": secure_aggregate}
    masks = torch.get_rng_state() if tc.fixed_dropout else None
    log_eval(0)
    for t in range(tc.rounds):
        if masks is not None and tc.renew_dropout and t and t % tc.renew_dropout == 0:
            masks = _renewed(masks)
        members = cohorts[t]
        cohort_sizes[t] = len(members)
        sent = np.zeros((n, d))
        for i in members:
            if idle and is_byz[i]:
                continue
            labels = y_flipped if (is_byz[i] and flips_labels(spec.attack)) else y_honest
            u = _local_update(model, adapter, theta, x_train, labels, parts[i], tc, batch_rng, masks)
            momentum[i] = tc.momentum * momentum[i] + (1.0 - tc.momentum) * u
            sent[i] = momentum[i]
        if dp.enabled:
            sent, was_clipped = clip_rows(sent, dp.clip)
            clipped += int(was_clipped[honest].sum())
        norms = np.linalg.norm(sent, axis=1)
        too_long = (norms > encoder_bound) & ~is_byz
        if too_long.any():
            sent[too_long] *= (encoder_bound / norms[too_long])[:, None]
            rescaled += int(too_long.sum())
        options = dict(spec.rule_options)
        if spec.base_rule == "cclip":
            if dp.enabled:
                # every accepted row lies in the ball of radius C, so its projection is a public center at least as
                # close to each of them; a sampled round also pads with this center, which must pass the check
                center = _into_ball(center, dp.clip)
            options["center"] = center
        if spec.reveal != "distances":
            options["reveal"] = spec.reveal
        if spec.pre is not None and bucket_size is None:
            options["pre"] = spec.pre
        if bucket_size is not None:
            options.pop("s", None)
        if dp.enabled:
            # every accepted contribution, a Byzantine one too, then has norm <= C: what the DP sensitivity assumes
            options["norm_bound"] = dp.clip
        # a rule-aware attack (optimal-alie/-ipm, cclip-adaptive) knows the rule, f, these options and the bound
        f_t = f if q == 1 else cohort_f(f, n, len(members), q)
        context = {"rule": spec.base_rule, "f": f_t, "rule_options": options,
                   "norm_bound": dp.clip if dp.enabled else encoder_bound}
        screened = 0
        # the row that adds nothing to a sum_form rule's sum: g(neutral) = 0 (the center for cclip, else 0)
        neutral = options["center"] if (fixed_denominator and spec.base_rule == "cclip") else np.zeros(d)
        if q == 1:
            rows, local_byz, local_honest, scale = sent, byzantine, honest, 1.0
        else:
            if (len(members) < DEFAULT_MIN_PARTICIPANTS or len(members) < rule_minimum(f_t)) and not fixed_denominator:
                # too few workers for the rule or the servers: nobody aggregates, the model stays
                skip_round(t, 0)
                continue
            # padded up to what the servers and the rule (told the real cohort's f_t) accept
            k = max(len(members), min_cohort, rule_minimum(f_t)) if fixed_denominator else len(members)
            rows = np.zeros((k, d))
            rows[len(members):] = neutral
            rows[: len(members)] = sent[members]
            local_byz = [j for j, w in enumerate(members) if is_byz[w]]
            local_honest = np.array([j for j, w in enumerate(members) if not is_byz[w]], dtype=np.int64)
            if not len(local_honest):
                local_byz = []  # an attack needs honest rows to work from: alone, Byzantine workers send their own
            scale = len(rows) / (q * n) if fixed_denominator else 1.0
        byz_inputs = byzantine_inputs(attack, spec.attack, rows, local_byz, local_honest, attack_rng, tc.frac_bits,
                                      context)
        if fixed_denominator and local_byz:
            # A row over the bound adds nothing, as the validity check's rejection would, but the denominator stays:
            # the engine would divide by the rows it kept, breaking the sampled Gaussian mechanism's form
            over = [j for j in local_byz if np.linalg.norm(rows[j]) > dp.clip]
            rows[over] = neutral
            screened = len(over)
        if fixed_denominator:
            sigma = cohort_noise_std(spec.base_rule, dp.clip, dp.noise_multiplier, len(rows),
                                     dict(spec.rule_options), spec.reveal)
        elif noisy and q < 1:
            # this round's Gaussian mechanism over the k rows the rule is told hold at most f_t Byzantine ones
            n_bound, f_bound = sampled_rows_bound(spec.base_rule, len(rows), f_t)
            sigma = server_noise_std(spec.base_rule, n_bound, dp.clip, dp.noise_multiplier, f=f_bound,
                                     options=dict(spec.rule_options), pre=spec.pre, reveal=spec.reveal)
        if bucket_size is not None:
            mix = bucket_matrix(len(rows), bucket_size, round_seed(spec.seed, t).to_bytes(16, "little"))
            marked = list(byz_inputs["unchecked"])
            byz_inputs = {"unchecked": tuple(int(b) for b in np.flatnonzero(mix[:, marked].any(axis=1)))}
            rows = mix @ rows
        tick = time.perf_counter()
        try:
            result = engine_aggregate(
                rows,
                spec.base_rule,
                f_t,
                secure=spec.secure,
                frac_bits=tc.frac_bits,
                insecure_test_seed=round_seed(spec.seed, t),
                dp_noise_std=sigma,
                **byz_inputs,
                **injected,
                **options,
            )
        except RoundAborted as err:
            # too few rows passed the validity check (Byzantine rows rejected from a small cohort): the servers
            # abort and release nothing. Only where the cohort is not fixed by the mechanism's form: an
            # amplified DP round screens Byzantine rows before the engine and never gets here
            if q == 1 or fixed_denominator:
                raise
            aggregate_seconds += time.perf_counter() - tick
            skip_round(t, int(getattr(err, "rejected", 0) or 0))
            continue
        aggregate_seconds += time.perf_counter() - tick
        if q < 1 and int(is_byz[members].sum()) > f_t:
            over_f += 1
        now_rejected = dict(getattr(result, "rejected", None) or {})
        if fixed_denominator and now_rejected:
            raise RuntimeError(f"round {t}: the engine rejected rows {sorted(now_rejected)} of a sampled DP round, which "
                               "changes its denominator; the privacy accounting would not hold")
        if noisy and q == 1 and len(rows) - len(now_rejected) < n - f:
            raise RuntimeError(f"round {t}: the engine aggregated {len(rows) - len(now_rejected)} rows, fewer than the "
                               f"n - f = {n - f} the noise was calibrated for")
        # the released aggregate: with sampling under DP, (1/(qN)) sum over the cohort (see dp.cohort_noise_std)
        agg = neutral + scale * (np.asarray(result.aggregate, dtype=np.float64) - neutral)
        # reveal="aggregate": nobody learns the weights, so the run records NaN for them
        if result.weights is None or bucket_size is not None:
            weights[t] = np.nan
        elif q == 1:
            weights[t] = np.asarray(result.weights, dtype=np.float64)
        else:
            weights[t] = 0.0
            weights[t, members] = scale * np.asarray(result.weights, dtype=np.float64)[: len(members)]
        participation[members] += 1
        byz_since_eval.append(float(weights[t, byzantine].sum()) if f else 0.0)
        rejected[t] = len(now_rejected) + screened
        if bucket_size is not None:  # rows are buckets: count the rejected ones without a Byzantine member
            rejected_honest += sum(int(w) not in byz_inputs["unchecked"] for w in now_rejected)
        else:
            rejected_honest += sum(not is_byz[w if q == 1 else int(members[w])] for w in now_rejected)
        rejected_since_eval.append(len(now_rejected) + screened)
        if accountant is not None:
            accountant.step()
        center, moved = carried_center(agg, tc.frac_bits)
        rescaled_centers += int(moved and spec.base_rule == "cclip")
        theta = theta - tc.lr * agg
        adapter.set(theta)
        if not np.all(np.isfinite(theta)):
            diverged = True
            weights = weights[: t + 1]
            rejected = rejected[: t + 1]
            cohort_sizes = cohort_sizes[: t + 1]
            log_eval(t + 1)
            last = history[-1]
            for r in _eval_rounds(tc.rounds, tc.eval_every):
                if r > t + 1:
                    history.append({**last, "round": r})
            break
        if on_round is not None:
            on_round(t + 1)
        if (t + 1) % tc.eval_every == 0 or t + 1 == tc.rounds:
            log_eval(t + 1)

    return RunResult(
        spec=spec,
        dataset=dataset.name,
        dim=d,
        byzantine=byzantine,
        history=history,
        weights=weights,
        epsilon=spent() if noisy else None,
        seconds=time.perf_counter() - started,
        aggregate_seconds=aggregate_seconds,
        diverged=diverged,
        rescaled_rows=rescaled,
        clipped_rows=clipped,
        rescaled_centers=rescaled_centers,
        rejected=rejected,
        rejected_honest=int(rejected_honest),
        epsilon_server=server_epsilon(server_z, participation[honest], dp.delta) if noisy else None,
        over_f_rounds=over_f,
        noise_multiplier=dp.noise_multiplier if noisy else None,
        cohort_sizes=cohort_sizes,
        copied=getattr(attack, "copied", None),
    )


def sampled_rows_bound(rule: str, k: int, f_t: int) -> tuple[int, int]:
    """(n, f) to calibrate an unamplified sampled round of k rows whose rule is told f_t: any number r of its
    rows may be rejected (a cohort can hold more Byzantine workers than f_t), leaving m = k - r >= 5 rows (or
    the servers abort) and f_eff = max(0, f_t - r). The trimmed mean keeps m - 2 f_eff >= min(k - 2 f_t, 5)
    rows, hence (that, 0); for every other rule the bound is largest at r = 0, hence (k, f_t)."""
    if rule == "trimmed-mean":
        kept = k - 2 * f_t if k - DEFAULT_MIN_PARTICIPANTS <= f_t else min(k - 2 * f_t, DEFAULT_MIN_PARTICIPANTS)
        return max(1, kept), 0
    return k, f_t


def cohort_f(f: int, n: int, k: int, q: float) -> int:
    """The f a rule is told in a round of k sampled workers out of n, f of them Byzantine: the population's
    share, ceil(k f / n), at most f (all of f when every worker takes part). Public (it depends on k only);
    a cohort that happens to draw more Byzantine workers than that is outside the rule's guarantee, as
    anywhere a cohort is sampled."""
    return f if q == 1 else min(f, math.ceil(k * f / n))


def _into_ball(v: np.ndarray, radius: float) -> np.ndarray:
    """The projection of v onto the ball of radius (1 - 2^-8) r: a little inside, so that the encoded row still
    passes a validity check at bound r."""
    r = radius * (1.0 - 2.0**-8)
    norm = float(np.linalg.norm(v))
    return v * (r / norm) if norm > r else v


def server_epsilon(noise_multiplier: float, participation: np.ndarray, delta: float) -> float:
    """Epsilon against a server, who knows the cohort: each worker's rounds are Gaussian mechanisms with multiplier
    z, composed over the rounds it took part in (the largest count among the honest workers), no sampling."""
    rounds = int(participation.max()) if len(participation) else 0
    return epsilon_after(noise_multiplier, rounds, delta) if rounds else 0.0


def _renewed(masks: torch.Tensor) -> torch.Tensor:
    """The torch RNG state one int64 draw after ``masks``: on a CPU the bucketing paper's evaluation opens a
    DataLoader iterator, which draws its base seed so, and the next 30 iterations share the masks after it."""
    torch.set_rng_state(masks)
    torch.empty((), dtype=torch.int64).random_()
    return torch.get_rng_state()


def _eval_rounds(rounds: int, every: int) -> list[int]:
    return sorted({0, rounds, *range(every, rounds + 1, every)})


def _local_update(
    model: torch.nn.Module,
    adapter: FlatAdapter,
    theta: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: np.ndarray,
    tc: TrainConfig,
    rng: np.random.Generator,
    masks: torch.Tensor | None = None,
) -> np.ndarray:
    """Average stochastic gradient over K local SGD steps from theta, on the worker's examples; ``masks``, a
    torch RNG state, is restored before every forward pass (``train.fixed_dropout``: the same dropout masks)."""
    adapter.set(theta)
    total = np.zeros(adapter.dim)
    size = min(tc.batch_size, len(indices))
    for _ in range(tc.local_steps):
        batch = torch.from_numpy(rng.choice(indices, size=size, replace=False))
        model.zero_grad(set_to_none=True)
        if masks is not None:
            torch.set_rng_state(masks)
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        grad = adapter.grad()
        total += grad
        if tc.local_steps > 1:
            with torch.no_grad():
                for p, g in zip(adapter.params, adapter.unflatten(grad)):
                    p.sub_(tc.local_lr * g)
    return total / tc.local_steps
