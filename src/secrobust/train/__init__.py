"""Robust federated training under attack, on top of the secure aggregation engine.

Workers train a PyTorch model on partitioned handwritten digits; Byzantine workers replace their
updates by an attack; each round the updates go through ``secrobust.aggregate`` (two-server
secure protocol) or ``secrobust.plain_aggregate`` (its plaintext twin), and the global model
takes a step along the revealed aggregate.

Modules: ``data`` (data sets and partitions), ``models`` (models and the flat-vector adapter),
``attacks``, ``dp`` (clipping and privacy accounting), ``config`` (TOML grids), ``runner`` (one
training run), ``experiment`` (a grid with resume), ``plots``, ``commands`` (the CLI).

``secrobust.train.FlatAdapter`` (from ``models``) maps a torch model's parameters to the flat vector the
aggregation takes and back: docs/quickstart-pytorch.md shows it in a training loop of your own.
"""


def __getattr__(name: str) -> object:
    """``FlatAdapter``, imported on first use (it needs torch; ``secrobust.train.config`` does not)."""
    if name == "FlatAdapter":
        from .models import FlatAdapter

        return FlatAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FlatAdapter"]
