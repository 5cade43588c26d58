"""Config: TOML parsing, strict validation, grid expansion, stable run ids, the shipped demo."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import tomllib

from secrobust.train.config import demo_config, load_config, parse_config
from secrobust.train.experiment import validate

GRID_TOML = """
name = "grid"
[train]
rounds = 7
[grid]
rules = ["mean", "krum", "geomed"]
attacks = ["sign-flip", "alie"]
f = [2, 4]
seeds = [0, 1]
secure = true
[rule_options.geomed]
iterations = 5
[attack_options.sign-flip]
scale = 3
"""


def test_lists_expand_into_the_product_and_options_reach_their_runs(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID_TOML)

    cfg = load_config(path)
    runs = cfg.runs()

    assert len(runs) == 3 * 2 * 2 * 2 * 1 * 1
    assert cfg.grid.secure == (True,)
    assert all(r.train.rounds == 7 for r in runs)
    assert {r.rule_options.get("iterations") for r in runs if r.rule == "geomed"} == {5}
    assert all(r.rule_options == {} for r in runs if r.rule != "geomed")
    assert {r.attack_options.get("scale") for r in runs if r.attack == "sign-flip"} == {3}


def test_run_ids_are_unique_stable_and_change_with_any_setting() -> None:
    cfg = parse_config(tomllib.loads(GRID_TOML))

    ids = [r.run_id for r in cfg.runs()]
    again = [r.run_id for r in parse_config(tomllib.loads(GRID_TOML)).runs()]
    longer = [r.run_id for r in cfg.replace(train={"rounds": 8}).runs()]

    assert len(set(ids)) == len(ids)
    assert ids == again
    assert not set(ids) & set(longer)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"trian": {}}, r"unknown top-level key\(s\) \['trian'\]"),
        (
            {"train": {"round": 5}},
            r"unknown key\(s\) \['round'\] in \[train\]; allowed: \['workers', 'rounds'",
        ),
        ({"train": {"rounds": 2.5}}, "train.rounds must be an integer"),
        ({"train": {"rounds": 0}}, "train.rounds must be > 0"),
        ({"grid": {"secure": "yes"}}, "grid.secure must be true or false"),
        ({"grid": {"attacks": ["sign-flip", "alei"]}}, "unknown attack 'alei'"),
        ({"grid": {"seeds": [1, 1]}}, "duplicate"),
        ({"data": {"dataset": "cifar"}}, "choose from digits, mnist"),
        ({"attack_options": {"alie": {"zz": 1}}}, r"unknown option\(s\) \['zz'\] in attack_options.alie"),
        ({"dp": {"noise_multiplier": 1.0}}, "needs dp.clip > 0"),
    ],
)
def test_mistakes_are_rejected_with_what_is_allowed(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(table)


def test_demo_config_ships_in_the_package_and_meets_the_issue() -> None:
    cfg = demo_config()

    assert cfg.train.workers == 20 and cfg.grid.f == (4,)
    assert {"mean", "krum", "krum@aggregate", "krum+nnm", "multi-krum", "geomed"} <= set(cfg.grid.rules)
    assert {"sign-flip", "alie", "min-max", "ring-overflow"} <= set(cfg.grid.attacks)
    assert cfg.attack_options.get("sign-flip", {}).get("scale", 1.0) == 1.0     # the unscaled sign flip
    assert cfg.attack_options.get("alie", {}).get("z", 1.5) == 1.5                # ByzFL's default
    assert set(cfg.grid.secure) == {True, False}
    assert cfg.data.dataset == "digits"


def test_every_shipped_config_parses_and_the_engine_accepts_its_rules() -> None:
    folder = importlib.resources.files("secrobust.train").joinpath("configs")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml"))

    for name in names:
        cfg = parse_config(tomllib.loads(folder.joinpath(name).read_text()))
        validate(cfg.runs())

    assert "demo.toml" in names and len(names) >= 2
