"""docs/quickstart-pytorch.md is tested as written: its one python block runs unchanged, trains the model
through secure Krum rounds with the Byzantine rows at weight 0, and prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

DOC = Path(__file__).resolve().parents[1] / "docs" / "quickstart-pytorch.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _accuracy(ns: dict) -> float:
    return float((ns["model"](ns["X"]).argmax(1) == ns["y"]).float().mean())


def test_the_quickstart_loop_runs_as_written_and_trains_past_the_attackers():
    text = DOC.read_text()
    blocks = _blocks(text)
    assert len(blocks) == 1, "the page has exactly one python block: the loop the test runs"
    code = blocks[0]
    assert len(code.splitlines()) <= 36                      # "a ~30-line loop"
    for name in ("FlatAdapter", "Cluster", "run_round", "norm_bound"):
        assert name in code
    ns: dict = {"__name__": "__quickstart__"}
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), ns)        # its own assert: attackers at weight 0 every round
    finally:
        torch.set_num_threads(threads)

    res, byz = ns["result"], ns["byzantine"]
    assert ns["rnd"] == 19                                   # every round ran
    assert np.all(res.weights[byz] == 0) and res.weights.sum() == pytest.approx(1.0)
    assert res.rejected == {}                                # at the bound: Krum excluded them, not the check
    assert res.aggregate.shape == (ns["flat"].dim,)
    trained = _accuracy(ns)
    assert trained > 0.9
    moved = float(np.linalg.norm(ns["flat"].get() - ns["theta0"]))
    assert moved > 0.5
    ns["flat"].set(ns["theta0"])                             # the untrained model did not already know the task
    assert _accuracy(ns) < 0.75

    printed = re.fullmatch(r"moved (\S+), accuracy (\S+)%\n", out.getvalue())
    claimed = re.search(r"It prints about `moved (\S+), accuracy (\S+)%`", text)
    assert printed and claimed, (out.getvalue(), "the page quotes the printed line")
    assert float(printed[1]) == pytest.approx(float(claimed[1]), abs=0.05)
    assert float(printed[2]) == pytest.approx(float(claimed[2]), abs=1.5)


def test_flat_adapter_is_public_and_round_trips():
    from secrobust.train import FlatAdapter

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    flat = FlatAdapter(model)
    theta = flat.get()
    assert flat.dim == 3 * 4 + 4 + 4 * 2 + 2 and theta.dtype == np.float64
    flat.set(theta + 1.0)
    assert np.allclose(flat.get(), theta + 1.0)
    assert [tuple(t.shape) for t in flat.unflatten(theta)] == [(4, 3), (4,), (2, 4), (2,)]
    with pytest.raises(ValueError, match="length 26"):
        flat.set(theta[:-1])
    assert "contract" in FlatAdapter.__doc__
