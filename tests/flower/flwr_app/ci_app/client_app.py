"""ClientApp: each node moves the model towards a shared target; nodes with partition id < byzantine
send the opposite move, 20 times larger."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secrobust.flower import secrobust_mod

D = 20
app = ClientApp(mods=[secrobust_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    rng = np.random.default_rng(pid)
    step = 0.5 * (np.ones(D) - w) + 0.01 * rng.normal(size=D)
    if pid < int(context.run_config.get("byzantine", 0)):
        step = -20.0 * step
    return Message(RecordDict({"arrays": ArrayRecord([w + step]),
                               "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)
