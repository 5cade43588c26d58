"""A real deployment: S0, S1, the dealer and the workers as separate processes over gRPC with mutual TLS.

Modules: ``config`` (TOML and flags), ``rounds`` (the public parameters of a round), ``server``,
``dealer`` and ``worker`` (each party's network runtime around the protocol's node objects),
``operator`` (opens rounds, collects results), ``process`` (running a role in a process), ``local``
(a whole deployment on loopback, one OS process per party) and ``commands`` (the CLI).
The protocol math lives in ``secrobust.protocol`` and ``secrobust.nodes`` only.
"""
