"""What every CLI command shares: one-line errors on stderr (exit code 2), checked ``.npy`` inputs and output paths.

Imports only NumPy and typer, so the deployment commands can use it without the engine.
"""

from __future__ import annotations

import os
from pathlib import Path
import json
from typing import Any, NoReturn

import numpy as np
import typer

EXIT_ERROR = 2
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def one_line(message: object) -> str:
    """``message`` as text on a single line (line breaks and runs of blanks become one space)."""
    return " ".join(str(message).split())


def fail(message: object) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with code 2."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(EXIT_ERROR)


def check_file(path: Path, option: str, kind: str = "a file") -> None:
    """Raise ValueError unless ``path`` exists and is a regular file (``kind`` names what it should be)."""
    if not path.exists():
        raise ValueError(f"{option}: {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a directory, not {kind}")
    if not path.is_file():
        raise ValueError(f"{option}: {path} is not a regular file")


def check_input_file(path: Path, option: str) -> None:
    """Raise ValueError unless ``path`` is an existing, non-empty ``.npy`` file (read by its first bytes)."""
    check_file(path, option, "a .npy file")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise ValueError(f"{option}: {path} is empty, not a .npy file")
    if head.startswith(ZIP_MAGIC) and path.suffix in (".pt", ".pth"):
        return
    if head.startswith(ZIP_MAGIC):
        raise ValueError(f"{option}: {path} is an .npz archive (or a torch.save file: name it .pt); save a single array with numpy.save(path, array)")
    if head != NPY_MAGIC:
        raise ValueError(f"{option}: {path} is not a .npy file (no NumPy header; a CSV or text file must be "
                         "converted with numpy.save(path, array))")


def load_array(path: Path, option: str, ndim: int | None = None) -> np.ndarray:
    """A real-valued array from a ``.npy`` file without unpickling; ValueError names what is wrong with it.

    With ``ndim``, the array must have that many dimensions, each of length at least 1.
    """
    check_input_file(path, option)
    if Path(path).suffix in (".pt", ".pth"):
        arr = _load_torch(path, option)
    else:
        arr = _load_npy(path, option)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{option}: {path} has dtype {arr.dtype}; need real numbers (float or int)")
    if ndim is not None and (arr.ndim != ndim or min(arr.shape, default=0) < 1):
        raise ValueError(f"{option}: {path} has shape {arr.shape}; need {_shape_words(ndim)}")
    return arr


def _load_torch(path: Path, option: str) -> np.ndarray:
    """A tensor saved with ``torch.save``, loaded with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{option}: {path} is a torch file; install the train extra (pip install "
                         "'secrobust[train]') or save it with numpy.save(path, tensor.numpy())") from None
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ValueError(f"{option}: {path} is not a readable torch tensor file: {one_line(exc)}") from None
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{option}: {path} holds a {type(value).__name__}, not one tensor; save the (n, d) tensor")
    return value.detach().cpu().numpy()


def _load_npy(path: Path, option: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(f"{option}: {path} holds a pickled object array; save a numeric array "
                             "(pickles are never loaded)") from None
        raise ValueError(f"{option}: {path} is not a readable .npy file: {one_line(exc)}") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{option}: {path} is not a readable .npy file: {one_line(exc)}") from None


def _shape_words(ndim: int) -> str:
    """How an error message names the expected shape."""
    return {1: "a vector (d,) with d >= 1",
            2: "a matrix (n, d), one row per worker, with n, d >= 1"}.get(ndim, f"{ndim} dimensions")


def check_output_file(path: Path, option: str = "--out") -> None:
    """Raise ValueError unless ``path`` can be written: its folder exists and is writable, it is no directory."""
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a directory; give a file path")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{option}: cannot write {path} (permission denied)")


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Raise ValueError unless ``path`` is a writable folder or can be made in a writable one."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option}: {path} exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot make {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option}: cannot write to {existing} (permission denied)")


def save_npy(path: Path, array: np.ndarray) -> None:
    """``numpy.save`` to exactly ``path``."""
    with path.open("wb") as fh:
        np.save(fh, array, allow_pickle=False)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``numpy.savez`` to exactly ``path``, whatever its suffix."""
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


__all__ = ["EXIT_ERROR", "check_file", "check_input_file", "check_output_dir", "check_output_file", "fail", "load_array",
           "one_line", "save_npy", "save_npz"]


def parse_key_values(items: list[str], flag: str = "--option") -> dict[str, Any]:
    """``key=value`` items (the value read as JSON if it parses, else as text) as a dict, ``-`` in keys as
    ``_``; ValueError naming ``flag`` for an item without ``=`` or a key."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} is key=value, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out
