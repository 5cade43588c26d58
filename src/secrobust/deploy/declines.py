"""A worker's refusal to take part in a round, with its reason, as the servers report it to the operators.

A worker that cannot share its update (the file has the wrong dimension, holds NaN, cannot be read)
sends nothing to either server, so without a word from it the operator would only see that too few
workers took part. It tells both servers instead: the control command ``decline`` with
``{"reason": text}`` for the round it sits out. A server takes it only from a worker expected in the
round it has open, keeps the first reason per worker (``MAX_REASON`` characters, one line), and lists
it in its report under ``declined`` ({worker id as a string: reason}); the operator names these
workers and reasons when the round fails (``operator.declined_note``). A decline changes nothing in
the protocol: the worker is simply absent, as a dropout is.
"""

from __future__ import annotations

from typing import Any

from ..transport.grpc.errors import Rejected

COMMAND = "decline"
MAX_REASON = 300


def clean_reason(text: object) -> str:
    """``text`` on one line of printable characters, at most ``MAX_REASON`` long."""
    line = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 3] + "..."


def parse_decline(args: dict[str, Any]) -> str:
    """The reason of a ``decline`` call (``{"reason": text}``), cleaned; Rejected("bad-request") otherwise."""
    reason = args.get("reason")
    if not isinstance(reason, str) or not reason.strip() or set(args) != {"reason"}:
        raise Rejected("bad-request", 'decline takes {"reason": "<non-empty text>"} and nothing else')
    return clean_reason(reason)


__all__ = ["COMMAND", "MAX_REASON", "clean_reason", "parse_decline"]
