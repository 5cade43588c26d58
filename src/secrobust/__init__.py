"""secrobust: secure and Byzantine-robust aggregation with two non-colluding servers.

    res = secrobust.aggregate(updates, rule="krum", f=2)
    res.aggregate, res.weights, res.distances, res.stats
"""

from . import _astguard  # noqa: F401  first: guards ast.parse before any of our threads start (gh-106905)
from . import rules
from .api import AggregateResult, Cluster, aggregate, plain_aggregate
from .errors import (
                     DuplicateWorker,
                     MalformedMessage,
                     ProtocolError,
                     RoundAborted,
                     TripleReuseError,
                     UnexpectedMessage,
                     UnknownWorker,
)
from .primitives.ring import DEFAULT_FRAC_BITS, max_norm

RULES = rules.RULES

__all__ = ["RULES", "AggregateResult", "Cluster", "DEFAULT_FRAC_BITS", "DuplicateWorker", "MalformedMessage",
           "ProtocolError", "RoundAborted", "TripleReuseError", "UnexpectedMessage", "UnknownWorker", "aggregate",
           "max_norm", "plain_aggregate", "rules"]
__version__ = "0.1.0"
