"""A real deployment: S0, S1, the dealer and the workers as separate processes over gRPC with mutual TLS.

Modules: ``config`` (TOML and flags), ``layout`` (one folder and TOML file per party, ``init``),
``rounds`` (the public parameters of a round), ``server``, ``dealer`` and ``worker`` (each party's
network runtime around the protocol's node objects), ``declines`` (a worker's reason to sit a round
out), ``operator`` (opens rounds, collects results), ``process`` (running a role in a process),
``local`` (a whole deployment on loopback, one OS process per party) and the CLI: ``commands`` (the
parties), ``setup_commands`` (keys and ``init``), ``round_command`` (the operators). Keys and
certificates: ``secrobust.certs`` and ``secrobust.pki``.
The protocol math lives in ``secrobust.protocol`` and ``secrobust.nodes`` only.
"""
