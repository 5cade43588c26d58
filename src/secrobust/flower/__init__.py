"""Secure robust aggregation for Flower apps (the optional extra ``flower``: flwr 1.42.0).

* Client side: ``secrobust_mod`` / ``SecRobustMod`` (``secrobust.flower.client``), a ClientApp mod that
  shares each update with S0 and S1 over secrobust's own gRPC with mutual TLS; the Flower server never
  sees an update or a share.
* Server side: ``SecRobust`` (``secrobust.flower.strategy``), FedAvg's sampling and evaluation with each
  training round aggregated by S0 and S1 (any rule, option and reveal mode of ``secrobust.aggregate``).
* ``FlowerServers`` (``secrobust.flower.servers``): the dealer, S0 and S1 as processes on loopback with a
  worker identity per Flower client; ``run_inprocess`` (``secrobust.flower.inprocess``): a ServerApp and
  its ClientApps in one process without Ray; ``secrobust.flower.sim``: the ``flower-sim`` command's run.

See docs/flower.md.
"""

from __future__ import annotations

from typing import Any

from .keys import FLWR_VERSION, INSTALL_HINT

_LAZY = {"SecRobustMod": "client", "secrobust_mod": "client", "SecRobust": "strategy", "RoundRecord": "strategy",
         "FlowerServers": "servers", "InProcessGrid": "inprocess", "run_inprocess": "inprocess"}


def require_flwr() -> str:
    """flwr's version; ImportError with the install command when flwr is missing or another version."""
    try:
        import flwr
    except ModuleNotFoundError as exc:
        raise ImportError(f"secrobust.flower needs Flower: {INSTALL_HINT}") from exc
    version = getattr(flwr, "__version__", "?")
    if version != FLWR_VERSION:
        raise ImportError(f"secrobust.flower is written for flwr=={FLWR_VERSION}, found {version}: {INSTALL_HINT}")
    return version


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        require_flwr()
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["FLWR_VERSION", "FlowerServers", "InProcessGrid", "RoundRecord", "SecRobust", "SecRobustMod",
           "require_flwr", "run_inprocess", "secrobust_mod"]
