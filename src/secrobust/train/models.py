"""Five PyTorch classifiers and the adapter between a model's parameters and a flat vector.

The aggregation engine works on rows of an (n, d) float matrix. ``FlatAdapter`` fixes an order
of the model's parameters (``model.parameters()``) and maps them, or their gradients, to one
float64 vector of length d = sum of the parameters' sizes, and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("logreg", "mlp", "cnn", "mnist-net", "bucketing-mnist-net")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
"""The usual MNIST pixel mean and standard deviation (of [0, 1] pixels), which ``MnistNet`` standardises by."""


class LogReg(nn.Module):
    """Multinomial logistic regression: logits = W vec(x) + b."""

    def __init__(self, in_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """One hidden layer: logits = W2 relu(W1 vec(x) + b1) + b2."""

    def __init__(self, in_features: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (8 and 16 channels), each followed by ReLU and 2x2 max-pooling, then a
    linear layer. Input (N, C, H, W) with H and W divisible by 4 (8x8 digits, 28x28 MNIST)."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, channels: int = 8) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise ValueError(f"SmallCNN needs H and W divisible by 4, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * channels * (h // 4) * (w // 4), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MnistNet(nn.Module):
    """PyTorch's MNIST example network (d = 1,199,882 on 28x28 inputs): x -> (x - 0.1307) / 0.3081,
    conv 3x3 (32) -> ReLU -> conv 3x3 (64) -> ReLU -> 2x2 max-pool -> channel dropout 0.25 -> linear 9216 -> 128
    -> ReLU -> dropout 0.5 -> linear 128 -> 10.

    ``conv2_relu=False`` is the network of Karimireddy, He, Jaggi's released code (``codes/tasks/mnist.py``
    of epfml/byzantine-robust-noniid-optimizer), model "bucketing-mnist-net": the same layers and parameters
    without the ReLU after conv2, so the max-pool takes conv2's signed outputs.

    Dropout is active in ``train()`` mode and draws from the global torch RNG (the runner seeds it per run)."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, conv2_relu: bool = True) -> None:
        super().__init__()
        self.conv2_relu = conv2_relu
        c, h, w = input_shape
        if h < 6 or w < 6 or (h - 4) % 2 or (w - 4) % 2:
            raise ValueError(f"MnistNet needs H and W >= 6 with H - 4 and W - 4 even, got {h}x{w}")
        self.conv1 = nn.Conv2d(c, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), 128)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - MNIST_MEAN) / MNIST_STD
        x = self.conv2(F.relu(self.conv1(x)))
        x = F.max_pool2d(F.relu(x) if self.conv2_relu else x, 2)
        x = torch.flatten(self.dropout1(x), 1)
        return self.fc2(self.dropout2(F.relu(self.fc1(x))))


def build_model(
    name: str, input_shape: Sequence[int], n_classes: int, *, hidden: int = 32, seed: int | None = 0
) -> nn.Module:
    """Build ``name`` (one of ``MODELS``) with weights initialised from ``seed``.

    The initialisation draws from a forked torch RNG, so it neither depends on nor disturbs the
    global torch RNG state. ``seed=None`` draws from the global torch RNG instead and advances it, as
    ``torch.manual_seed(s); Net()`` does in other codebases (``model.init = "torch-seed"``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    in_features = math.prod(input_shape)
    if seed is None:
        return _construct(name, input_shape, n_classes, hidden, in_features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _construct(name, input_shape, n_classes, hidden, in_features)


def _construct(name: str, input_shape: Sequence[int], n_classes: int, hidden: int, in_features: int) -> nn.Module:
    if name == "logreg":
        return LogReg(in_features, n_classes)
    if name == "mlp":
        return MLP(in_features, hidden, n_classes)
    if name in ("mnist-net", "bucketing-mnist-net"):
        return MnistNet(input_shape, n_classes, conv2_relu=name == "mnist-net")
    return SmallCNN(input_shape, n_classes)


class FlatAdapter:
    """View a model's parameters as one flat float64 vector theta in R^d (``from secrobust.train import FlatAdapter``).

    The contract:

    - theta holds the trainable parameters (``requires_grad``, as they are when the adapter is made) in
      the order of ``model.parameters()``, each flattened row-major; ``dim`` is d, the sum of their sizes.
      Buffers (batch-norm statistics) are not parameters and are not in theta.
    - ``get()`` returns a new float64 numpy copy of theta; ``grad()`` the flattened gradients in the same
      layout (zeros for a parameter without a gradient).
    - ``set(v)`` writes a length-d vector into the parameters in place (under ``no_grad``, cast to their
      dtype, so ``set(get())`` is exact for float32/float64 models), and ``unflatten(v)`` splits one into
      tensors shaped like the parameters. A vector of another length raises ValueError.

    So a worker's update is ``adapter.get()`` after local training minus ``get()`` before, an (n, d)
    stack of them goes to ``secrobust.aggregate`` or ``Cluster.run_round``, and the global model takes
    ``adapter.set(theta + result.aggregate)`` (docs/quickstart-pytorch.md).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = int(sum(self.sizes))

    def get(self) -> np.ndarray:
        return torch.nn.utils.parameters_to_vector(self.params).detach().double().numpy()

    def set(self, vector: np.ndarray | torch.Tensor) -> None:
        vec = torch.as_tensor(np.asarray(vector), dtype=self.params[0].dtype)
        self._check(vec)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vec, self.params)

    def grad(self) -> np.ndarray:
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params]
        return torch.cat(parts).detach().double().numpy()

    def unflatten(self, vector: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        vec = torch.as_tensor(np.asarray(vector), dtype=self.params[0].dtype)
        self._check(vec)
        return [chunk.reshape(shape) for chunk, shape in zip(vec.split(self.sizes), self.shapes)]

    def _check(self, vec: torch.Tensor) -> None:
        if vec.shape != (self.dim,):
            raise ValueError(f"expected a vector of length {self.dim}, got shape {tuple(vec.shape)}")
