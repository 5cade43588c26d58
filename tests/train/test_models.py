"""Models and the flat-vector adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from secrobust.train.models import MODELS, FlatAdapter, build_model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_models_map_images_to_ten_logits(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10, hidden=16, seed=0)

    logits = model(torch.zeros((3, *shape)))

    assert logits.shape == (3, 10)


@pytest.mark.parametrize("name", MODELS)
def test_initialisation_depends_only_on_the_seed(name: str) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()

    a = FlatAdapter(build_model(name, (1, 8, 8), 10, seed=7)).get()
    b = FlatAdapter(build_model(name, (1, 8, 8), 10, seed=7)).get()
    c = FlatAdapter(build_model(name, (1, 8, 8), 10, seed=8)).get()

    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert torch.equal(state, torch.get_rng_state())


def test_adapter_round_trips_parameters_and_gradients() -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden=16, seed=0)
    adapter = FlatAdapter(model)
    expected_dim = 64 * 16 + 16 + 16 * 10 + 10

    vector = np.random.default_rng(0).normal(size=adapter.dim).astype(np.float32).astype(np.float64)
    adapter.set(vector)
    F.cross_entropy(model(torch.ones(2, 1, 8, 8)), torch.tensor([1, 2])).backward()

    assert adapter.dim == expected_dim
    np.testing.assert_array_equal(adapter.get(), vector)
    np.testing.assert_array_equal(
        adapter.grad(), torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
    )
    pieces = adapter.unflatten(vector)
    assert [tuple(p.shape) for p in pieces] == [tuple(p.shape) for p in model.parameters()]
    assert torch.equal(pieces[0], model.net[1].weight.detach())


def test_adapter_rejects_a_vector_of_the_wrong_length() -> None:
    adapter = FlatAdapter(build_model("logreg", (1, 8, 8), 10))

    with pytest.raises(ValueError, match="length 650"):
        adapter.set(np.zeros(649))


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="allowed: logreg, mlp, cnn"):
        build_model("resnet", (1, 8, 8), 10)
