"""Names shared by the Flower client mod and the strategy (no Flower import)."""

from __future__ import annotations

FLWR_VERSION = "1.42.0"
"""The Flower release ``secrobust.flower`` is written and tested against (the ``flower`` extra pins it)."""

INSTALL_HINT = "pip install 'secrobust[flower]' (flwr==1.42.0 with its simulation extra)"

RECORD = "secrobust"
"""Key of the ConfigRecord that carries this package's stage and fields in both directions."""
STATE = "secrobust.pending"
"""Key of the client's own state (``Context.state``, never sent) that holds its update between stages."""
STATE_META = "secrobust.pending-meta"
SIM_RECORD = "secrobust.sim"
"""Simulations only: a ClientApp's reply may carry {"unchecked": True} (its update bypasses the honest
encoder) or {"ring": True} with the uint64 ring row in the ArrayRecord ``SIM_RING`` (a ring attack)."""
SIM_RING = "secrobust.ring"

STAGE_TRAIN = "train"
"""Server -> client: train on these arrays; the mod keeps the update and answers with its worker id."""
STAGE_TRAINED = "trained"
STAGE_SHARE = "share"
"""Server -> client: round ``round`` is open at S0 and S1; share the kept update with them."""
STAGE_SHARED = "shared"
STAGE_DECLINED = "declined"
STAGE_TRAIN_SHARE = "train-share"
"""Server -> client, one message per round (nodes pinned to their workers): round ``round`` is already open
at S0 and S1 for the sampled nodes' workers; train, then share the update at once. The reply is the
train stage's (``STAGE_TRAINED``, binding) with ``share`` = ``STAGE_SHARED`` or ``STAGE_DECLINED`` and
``detail``."""

WORKER_CONFIG_KEY = "secrobust-worker-config"
"""node_config / run_config key (or the environment variable ``SECROBUST_WORKER_CONFIG``): the worker's
TOML file; ``{partition-id}`` in it is replaced by the node's partition id (simulations)."""
WORKER_CONFIG_ENV = "SECROBUST_WORKER_CONFIG"

NUMPY_CLIENT_HINT = (  # the KeyError: 'fitins.parameters' of a NumPyClient app under secrobust_mod
    "this ClientApp is a legacy NumPyClient / client_fn app (it looks for 'fitins.parameters'); SecRobust "
    "sends Flower's Message API: write the train function as @app.train() def train(msg, context) that "
    "reads msg.content['arrays'] and msg.content['config'] and returns Message(RecordDict({'arrays': ..., "
    "'metrics': MetricRecord({... 'num-examples': n})}), reply_to=msg) (docs/flower.md, "
    "\"From a NumPyClient + SecAgg+ app\")")
