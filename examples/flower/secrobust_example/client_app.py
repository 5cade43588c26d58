"""ClientApp: a FedAvg ClientApp plus ``mods=[secrobust_mod]``; the first ``byzantine`` clients attack."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secrobust.flower import secrobust_mod
from secrobust.flower.client import flatten, unflatten
from secrobust.train import attacks

from .task import app_config, model, test, train as local_train

app = ClientApp(mods=[secrobust_mod])        # the one line that differs from a FedAvg ClientApp


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, pid = app_config(context), int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    byzantine = pid < int(cfg.get("byzantine", 0))
    attack = str(cfg.get("attack", "none"))
    net = model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, examples = local_train(net, pid, int(context.node_config["num-partitions"]), int(cfg.get("local-steps", 20)),
                                 float(cfg.get("lr", 0.3)), byzantine and attacks.flips_labels(attack),
                                 seed=1000 * server_round + pid)
    arrays = ArrayRecord(net.state_dict())
    if byzantine and not attacks.flips_labels(attack) and not attacks.is_ring_attack(attack):
        sent = msg.content["arrays"]
        own = (flatten(arrays) - flatten(sent))[None, :]     # its honest update: all a Flower client sees
        bad = attacks.make_attack(attack)(own, own, np.random.default_rng([pid, server_round]))[0]
        arrays = unflatten(flatten(sent) + bad, sent)
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"train_loss": loss,
                                                                          "num-examples": examples})}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    net = model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    acc, loss = test(net)
    return Message(RecordDict({"metrics": MetricRecord({"accuracy": acc, "loss": loss, "num-examples": 1})}),
                   reply_to=msg)
