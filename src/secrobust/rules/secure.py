"""Reveal modes, and the rules that run on shares when the view stays secret.

``reveal="distances"`` (default): S1 opens the rule's view (distances or norms) and runs the rule itself.
``reveal="weights"``: the view stays shared; the rule runs in 2PC and only the weights are opened.
``reveal="aggregate"``: the weights stay shared too; only the aggregate is opened.
A rule on shares is a circuit from each server's share of the view to its ring share of the weights
(n,) and of the center weight, both at scale 2^W (W = ``ring.WEIGHT_FRAC_BITS``), so that the
aggregate sum_i w_i x_i + w_v v lands at the scale of the public-weight path.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..circuits import clip
from ..circuits import coordinatewise as C
from ..circuits import selection as S
from ..gates import arith, compare
from ..gates.compare import Party
from ..primitives import ring
from .view import DISTANCES, NORMS

MODES = ("distances", "weights", "aggregate")
DEFAULT_MODE = "distances"
_U = np.uint64
PUBLIC_WEIGHTS = ("mean",)
"""Rules whose weights follow from n alone: they open nothing in any mode."""


@dataclass(frozen=True)
class SecureRule:
    """``circuit(party, view_shares, n, f, options, dmax, src, inputs=, d=)`` returns ring shares of
    (weights (n,), center weight ()) at scale 2^W, or with ``output="aggregate"`` this server's share (d,) of
    the aggregate at scale 2^(F+W) itself, reading its input share through ``inputs(start, stop)``.
    ``plain`` is its twin on the ring view (and, for an aggregate, the encoded rows ``rows=``); ``options``
    lists what it accepts; ``sizer(n, d, f, options, dmax) -> (Budget, rounds)`` replaces the dry run when
    the circuit's size depends on d."""

    name: str
    needs: tuple[str, ...]
    circuit: Callable[..., Party]
    plain: Callable[..., Any]
    options: tuple[str, ...] = ()
    limits: str = ""
    modes: tuple[str, ...] = ("weights", "aggregate")
    output: str = "weights"
    sizer: Callable[..., tuple[arith.Budget, int]] | None = None
    exact: Callable[[np.ndarray, int, int, dict], np.ndarray] | None = None
    """Opened ring weights (n + 1,) -> the exact public weights, for rules whose weights are a chosen set
    times 1/m (so ``reveal="weights"`` reports 1/m, not its 32-bit rounding; the sum uses the same ring value)."""

    def publish(self, opened: np.ndarray, n: int, f: int, options: dict) -> np.ndarray:
        """The public weights and center weight (n + 1,) from their opened ring values at scale 2^W."""
        if self.exact is not None:
            return self.exact(np.asarray(opened, dtype=_U), n, f, options)
        return ring.decode(np.asarray(opened, dtype=_U), ring.WEIGHT_FRAC_BITS)


_SECURE: dict[str, SecureRule] = {}


def register_secure(rule: SecureRule) -> SecureRule:
    _SECURE[rule.name] = rule
    return rule


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"reveal must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return mode


def secure_rule(name: str, mode: str, options: dict[str, Any] | None = None) -> SecureRule | None:
    """The rule's circuit for a leakage-free mode (None for ``"distances"``); a clear error if it has none."""
    check_mode(mode)
    rule = _SECURE.get(name)
    if rule is not None and mode not in rule.modes and (mode != DEFAULT_MODE or name in ONLY_ON_SHARES):
        raise ValueError(f"rule {name!r} runs only with reveal={' or '.join(repr(m) for m in rule.modes)} (it runs "
                         f"on shares{'' if name not in ONLY_ON_SHARES else ' only'}); got reveal={mode!r}")
    if mode == DEFAULT_MODE or name in PUBLIC_WEIGHTS:
        return None
    if rule is None:
        on_shares = ", ".join(r for r, spec in _SECURE.items() if mode in spec.modes) or "none"
        raise ValueError(f"rule {name!r} runs only with reveal='distances' (S1 opens its view); rules with "
                         f"reveal={mode!r}: {on_shares}")
    unknown = sorted(set(options or {}) - set(rule.options))
    if unknown:
        raise ValueError(f"rule {name!r} with reveal={mode!r} does not take option(s) {unknown}; it takes: "
                         f"{', '.join(rule.options) or 'none'}{rule.limits}")
    return rule


def check_checked(rule: SecureRule | None, check_inputs: bool) -> None:
    """A rule on shares needs the input validity check: every circuit's range (docs/ranges.md) holds only for
    accepted inputs, so without the check a ring element could take a comparison past its width."""
    if rule is not None and not check_inputs:
        raise ValueError(f"rule {rule.name!r} on shares assumes the input validity check's range (docs/ranges.md): "
                         "check_inputs=False is allowed only with reveal='distances'")


def default_mode(name: str) -> str:
    """A rule's default reveal mode: the only one it has (coordinate-wise rules: "aggregate"), else "distances"."""
    return "aggregate" if name in ONLY_ON_SHARES else DEFAULT_MODE


def split_label(label: str) -> tuple[str, str]:
    """"krum@aggregate" -> ("krum", "aggregate"); a bare rule name runs with the default mode."""
    rule, sep, mode = str(label).partition("@")
    if sep and mode not in MODES:
        raise ValueError(f"{label!r}: the mode after '@' must be one of {', '.join(MODES)}")
    return rule, mode if sep else DEFAULT_MODE


ONLY_ON_SHARES: set[str] = set()
"""Rules with no opened-view form (coordinate-wise rules need the updates themselves)."""


def secure_rules() -> tuple[str, ...]:
    return tuple(_SECURE)


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


@functools.lru_cache(maxsize=128)
def _budget(name: str, n: int, f: int, options: tuple, dmax: int, d: int | None,
            frac_bits: int) -> tuple[arith.Budget, int]:
    rule = _SECURE[name]
    if rule.sizer is not None:
        if d is None:
            raise ValueError(f"sizing rule {name!r} on shares needs the dimension d")
        return rule.sizer(n, d, f, dict(options), dmax)
    zeros = {k: np.zeros((n, n) if k == DISTANCES else n, dtype=_U) for k in rule.needs}
    return arith.budget_of(lambda p, s: rule.circuit(p, zeros, n, f, dict(options), dmax, s, frac_bits=frac_bits))


def budget(name: str, n: int, f: int, options: dict[str, Any], dmax: int, d: int | None = None,
           frac_bits: int = ring.DEFAULT_FRAC_BITS) -> arith.Budget:
    """The dealer material the rule's circuit takes for n workers (enough for any fewer, after dropouts);
    coordinate-wise rules also need d, clipping rules F (their public tau is scaled by 2^F)."""
    return _budget(name, n, f, tuple(sorted(options.items())), dmax, d, frac_bits)[0]


def rounds(name: str, n: int, f: int, options: dict[str, Any], dmax: int, d: int | None = None,
           frac_bits: int = ring.DEFAULT_FRAC_BITS) -> int:
    """The circuit's messages per server (its 2PC rounds)."""
    return _budget(name, n, f, tuple(sorted(options.items())), dmax, d, frac_bits)[1]


def weights_scale() -> int:
    return 1 << ring.WEIGHT_FRAC_BITS


# Krum and Multi-Krum.

def _multi_krum_m(n: int, f: int, options: dict[str, Any], default_all: bool) -> int:
    m = options.get("m")
    m = (n - f if default_all else 1) if m is None else m
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ValueError(f"multi-krum needs 1 <= m <= n = {n}, got m={m!r}")
    return int(m)


def _krum_family(default_all: bool):
    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Source,
                **_: Any) -> Party:
        m = _multi_krum_m(n, f, options, default_all)
        plane = yield from S.krum_circuit(party, view[DISTANCES], f, m, dmax, src)
        chosen = yield from arith.to_ring(party, plane, n, src)
        return chosen * ring.encode_weights(np.array([1.0 / m]))[0], _U(0)

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        m = _multi_krum_m(n, f, options, default_all)
        chosen = S.plain_krum_chosen(view[DISTANCES], f, m).astype(_U)
        return chosen * ring.encode_weights(np.array([1.0 / m]))[0], _U(0)

    return circuit, plain


def _mda_family():
    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Source,
                **_: Any) -> Party:
        member = yield from S.mda_circuit(party, view[DISTANCES], f, dmax, src)
        return member * ring.encode_weights(np.array([1.0 / (n - f)]))[0], _U(0)

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        S.check_mda_size(n, f)
        member = S.plain_mda_members(view[DISTANCES], f).astype(_U)
        return member * ring.encode_weights(np.array([1.0 / (n - f)]))[0], _U(0)

    return circuit, plain


def _chosen_over(count: Callable[[int, int, dict], int]):
    """Exact weights of a rule that puts 1/count on each chosen worker (and nothing on the center)."""
    def exact(opened: np.ndarray, n: int, f: int, options: dict) -> np.ndarray:
        out = np.zeros(n + 1)
        out[:n] = (opened[:n] != 0) / count(n, f, options)
        return out
    return exact


register_secure(SecureRule("krum", (DISTANCES,), *_krum_family(False),
                           limits=" (scores are exact; n - f - 2 must stay below 2^63 / (2b)^2, b the norm bound)",
                           exact=_chosen_over(lambda n, f, o: 1)))
register_secure(SecureRule("multi-krum", (DISTANCES,), *_krum_family(True), options=("m",),
                           exact=_chosen_over(lambda n, f, o: _multi_krum_m(n, f, o, True))))
register_secure(SecureRule("mda", (DISTANCES,), *_mda_family(),
                           limits=" (exact search over all C(n, f) subsets: small n only)",
                           exact=_chosen_over(lambda n, f, o: n - f)))


# Clipping rules (``secrobust.circuits.clip``): the clip factors min(1, tau/||x_i - v||) on shared squared norms.

def _clip_family(name: str):
    def _tau(options: dict) -> float | None:
        iterations = options.get("iterations", 1)
        if iterations != 1:
            raise ValueError(f"cclip on shares runs one iteration (more would open or multiply the distances); "
                             f"got iterations={iterations!r}: use reveal='distances' for more")
        return options.get("tau")

    def split(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (w[:-1], w[-1]) if name == "cclip" else (w, _U(0))

    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Source, *,
                frac_bits: int = ring.DEFAULT_FRAC_BITS, **_: Any) -> Party:
        w = yield from clip.clip_weights_circuit(party, view[NORMS], _tau(options), name, src, frac_bits=frac_bits,
                                                    nmax=dmax)
        return split(w)

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              **_: Any) -> tuple[np.ndarray, np.ndarray]:
        return split(clip.plain_clip_weights(view[NORMS], _tau(options), name, frac_bits=frac_bits, nmax=dmax))

    return circuit, plain


for _clip in ("norm-clip", "cclip"):
    register_secure(SecureRule(_clip, (NORMS,), *_clip_family(_clip),
                               options=("tau",) if _clip == "norm-clip" else ("tau", "iterations"),
                               limits=" (clip factors by a 2PC reciprocal square root, error <= 2^-28 relative "
                                      "for a public tau, 2^-25 for the median: docs/clip2pc.md)"))


# Coordinate-wise rules (``secrobust.circuits.coordinatewise``): the circuit returns the aggregate share itself.

COORDINATE_CHUNK = 1 << 14
"""Columns sorted at a time: bounds the circuit's memory; every chunk takes fresh material in turn."""


def _bound_of(dmax: int) -> int:
    return math.isqrt(dmax) // 2


def _coordinate_family(name: str):
    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Source, *,
                inputs: Callable[[int, int], np.ndarray], d: int, **_: Any) -> Party:
        bound = _bound_of(dmax)
        chosen = None
        if name == "bulyan":
            chosen = yield from C.selection_circuit(party, view[DISTANCES], f, bound, src)
        out = np.empty(d, dtype=_U)
        for a in range(0, d, COORDINATE_CHUNK):
            b = min(d, a + COORDINATE_CHUNK)
            out[a:b] = yield from C.coordinatewise_circuit(party, inputs(a, b), name, f, bound, src, chosen=chosen)
        return out

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, *, rows: np.ndarray, **_: Any) -> np.ndarray:
        return C.plain_coordinatewise(rows, name, f, _bound_of(dmax))

    def sizer(n: int, d: int, f: int, options: dict, dmax: int) -> tuple[arith.Budget, int]:
        bound = _bound_of(dmax)
        C.check_options(name, n, f, bound)
        return _cohort_envelope(name, n, f, d, bound)

    return circuit, plain, sizer


def _envelope(a: arith.Budget, b: arith.Budget) -> arith.Budget:
    return arith.Budget(max(a.and_words, b.and_words), max(a.dabit_words, b.dabit_words), max(a.mults, b.mults))


@functools.lru_cache(maxsize=64)
def _cohort_envelope(name: str, n: int, f: int, d: int, bound: int) -> tuple[arith.Budget, int]:
    """The most material and rounds the rule's circuit takes over every cohort a round planned for (n, f) can
    end with: n' = n - dropouts - rejections workers with f' = f - rejections (rejections count against f).
    The pruned sorting networks are not monotone in n (trimmed-mean takes fewer AND words at n = 8 than at
    n = 7), so sizing for n alone let one dropout exhaust the dealer's material and abort the round."""
    total, most = arith.Budget(), 0
    for n2 in range(1, n + 1):
        for f2 in range(max(0, f - (n - n2)), f + 1):
            try:
                C.check_options(name, n2, f2, bound)
            except ValueError:
                continue
            b, r = _cohort_size(name, n2, f2, d, bound)
            total, most = _envelope(total, b), max(most, r)
    return total, most


def _cohort_size(name: str, n: int, f: int, d: int, bound: int) -> tuple[arith.Budget, int]:
    """Material and rounds of the whole circuit for one cohort (n, f) over d columns in chunks."""
    total, rounds_ = arith.Budget(), 0
    if name == "bulyan":
        zeros = np.zeros((n, n), dtype=_U)
        b, r = arith.budget_of(lambda p, s: C.selection_circuit(p, zeros, f, bound, s))
        total, rounds_ = total + b, rounds_ + r
    widths = [min(d, a + COORDINATE_CHUNK) - a for a in range(0, d, COORDINATE_CHUNK)]
    for w in sorted(set(widths)):
        b, r = _chunk_size_by_words(name, n, f, w, bound, name == "bulyan")
        k = widths.count(w)
        total = total + arith.Budget(b.and_words * k, b.dabit_words * k, b.mults * k)
        rounds_ += r * k
    return total, rounds_


def _chunk_size_by_words(name: str, n: int, f: int, w: int, bound: int, with_choice: bool) -> tuple[arith.Budget, int]:
    """``_chunk_size`` from dry runs of at most 64 columns: every gate packs its columns 64 to a bit word, so
    w = 64 q + r columns take q times the material of 64 plus that of r, in the same rounds (a unit test
    holds this against the full dry run)."""
    q, r = divmod(w, compare.WORD)
    total, rounds_ = arith.Budget(), 0
    if q:
        b, rounds_ = _chunk_size(name, n, f, compare.WORD, bound, with_choice)
        total = arith.Budget(b.and_words * q, b.dabit_words * q, b.mults * q)
    if r:
        b, rounds_ = _chunk_size(name, n, f, r, bound, with_choice)
        total = total + b
    return total, rounds_


@functools.lru_cache(maxsize=4096)
def _chunk_size(name: str, n: int, f: int, w: int, bound: int, with_choice: bool) -> tuple[arith.Budget, int]:
    x = np.zeros((n, w), dtype=_U)
    chosen = np.zeros(n, dtype=_U) if with_choice else None
    return arith.budget_of(lambda p, s: C.coordinatewise_circuit(p, x, name, f, bound, s, chosen=chosen))


def _register_coordinatewise() -> None:
    for name in C.COORDINATEWISE_RULES:
        circuit, plain, sizer = _coordinate_family(name)
        register_secure(SecureRule(name, (DISTANCES,) if name == "bulyan" else (), circuit, plain,
                                   modes=("aggregate",), output="aggregate", sizer=sizer,
                                   limits=" (coordinate-wise: sorting networks on the shares)"))
        ONLY_ON_SHARES.add(name)


_register_coordinatewise()
