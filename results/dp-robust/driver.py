"""Driver for the private-and-robust table: dp-robust.toml at several noise multipliers (Opacus picks z per target)."""
import dataclasses, json, sys, time
from opacus.accountants.utils import get_noise_multiplier
from secrobust.train.config import load_config
from secrobust.train.runner import run
from secrobust.train.data import load_dataset

cfg = load_config("src/secrobust/train/configs/dp-robust.toml")
T, delta = cfg.train.rounds, cfg.dp.delta
groups = [(("mean", "norm-clip"), 0.2), (("cclip", "multi-krum"), 1.0)]
settings = [("none", 0), ("sign-flip", 5), ("alie", 5), ("alie", 10)]
targets = [None, 8.0, 1.0]
out = open(sys.argv[1], "a")
spec0 = cfg.runs()[0]
ds = load_dataset("digits", seed=spec0.data_seed)
extra = [("mean", 0.2, "sign-flip", 5, 8.0, True), ("cclip", 1.0, "alie", 5, 8.0, True)]
jobs = [(r, q, a, f, e, False) for e in targets for rules, q in groups for r in rules for a, f in settings] + extra
for rule, q, attack, f, eps, secure in jobs:
    z = 0.0 if eps is None else get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q,
                                                     steps=T, accountant="rdp")
    dp = dataclasses.replace(cfg.dp, noise_multiplier=z, clip=cfg.dp.clip)
    tr = dataclasses.replace(cfg.train, sample_rate=q)
    spec = dataclasses.replace(spec0, rule=rule, attack=attack, f=f, dp=dp, train=tr, secure=secure,
                               rule_options=dict(cfg.rule_options.get(rule, {})),
                               attack_options=dict(cfg.attack_options.get(attack, {})))
    t0 = time.time()
    try:
        res = run(spec, dataset=ds)
        rec = res.record()
        rec.pop("history"); rec["target_epsilon"] = eps; rec["z"] = z
    except Exception as exc:  # noqa: BLE001
        rec = {"rule": rule, "attack": attack, "f": f, "target_epsilon": eps, "error": repr(exc)}
    out.write(json.dumps(rec, default=str) + "\n"); out.flush()
    print(rule, q, attack, f, eps, secure, rec.get("final_accuracy"), rec.get("epsilon"), rec.get("epsilon_server"),
          round(time.time() - t0, 1), flush=True)
