"""Moving protocol messages between parties, and counting what moves."""
