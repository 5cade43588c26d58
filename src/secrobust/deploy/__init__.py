"""A real deployment: S0, S1, the dealer and the workers as separate processes over gRPC with mutual TLS.

Modules: ``config`` (TOML and flags), ``layout`` (one folder and TOML file per party, ``init``),
``rounds`` (the public parameters of a round), ``server``, ``dealer`` and ``worker`` (each party's
network runtime around the protocol's node objects), ``declines`` (a worker's reason to sit a round
out), ``operator`` (opens rounds, collects results), ``process`` (running a role in a process),
``local`` (a whole deployment on loopback, one OS process per party), ``submit`` (``Worker``: a training
process shares its own update, ``Worker(config).submit(update)``, instead of a worker process reading an
inbox) and the CLI: ``commands`` (the
parties), ``setup_commands`` (keys and ``init``), ``round_command`` (the operators). Keys and
certificates: ``secrobust.pki.certs`` and ``secrobust.pki.ceremony``.
The protocol math lives in ``secrobust.protocol`` and ``secrobust.protocol.nodes`` only.
"""


def __getattr__(name: str) -> object:
    """``secrobust.deploy.Worker`` and ``WorkerOutcome``, imported on first use (they need gRPC; the
    configuration modules do not)."""
    if name in ("Worker", "NotExpected", "WorkerOutcome"):
        from . import submit

        return getattr(submit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NotExpected", "Worker", "WorkerOutcome"]
