"""Per-party protocol steps as functions of (state, incoming messages, randomness); no I/O here."""
