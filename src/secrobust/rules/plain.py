"""The plaintext oracle: the same rule on the same fixed-point-encoded updates, with no protocol.

Distances and norms are computed exactly in Z_2^64 from the encodings and decoded like the secure
path decodes them, so secure and plaintext weights agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import ring
from ..updates import as_matrix, check_unchecked, encode_center, encode_updates
from .registry import apply, get_rule
from .view import DISTANCES, Choice, View, view_words


@dataclass(frozen=True, eq=False)
class PlainRun:
    choice: Choice
    view: View
    encoded: np.ndarray
    center: np.ndarray | None


def view_from_gram(h: np.ndarray, reveal: tuple[str, ...], frac_bits: int) -> View:
    """Decode the view from (a matrix whose symmetrisation is) the Gram matrix of X - v, in the ring."""
    return View(**{k: ring.decode(v, 2 * frac_bits) for k, v in view_words(h, reveal).items()})


def plain_view(encoded: np.ndarray, reveal: tuple[str, ...], frac_bits: int,
               center: np.ndarray | None = None) -> View:
    if not reveal:
        return View()
    y = encoded - center if center is not None else encoded
    h = np.matmul(y, y.T) if DISTANCES in reveal else np.einsum("ij,ij->i", y, y)
    return view_from_gram(h, reveal, frac_bits)


def split_options(rule: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The public center is a protocol input, not a rule option; only cclip takes it."""
    options = dict(options)
    center = options.pop("center", None) if rule == "cclip" else None
    return center, options


def plain_run(updates: Any, rule: str, f: int, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              unchecked: Any = (), **options: Any) -> PlainRun:
    spec = get_rule(rule)
    x = as_matrix(updates)
    n, d = x.shape
    center_value, rule_options = split_options(rule, options)
    spec.validate(n, f, rule_options)
    encoded = encode_updates(x, frac_bits, check_unchecked(unchecked, n))
    center = encode_center(center_value, d, frac_bits) if center_value is not None else None
    view = plain_view(encoded, spec.reveals(rule_options), frac_bits, center)
    return PlainRun(apply(spec, view, n, f, rule_options), view, encoded, center)
