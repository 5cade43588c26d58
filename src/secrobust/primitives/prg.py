"""Seeds and their expansion into keystreams, with domain separation.

A seed is 16 or 32 bytes from ``secrets``. For each use, a 128-bit AES key is derived as
HMAC-SHA256(seed, "secrobust/v1|" + len(seed) + "key|" + label)[:16], and the keystream is AES-128-CTR under
that key from counter block 0. Child seeds use the tag "seed|" instead of "key|", so no label can make a
key equal a child seed. Labels name the round, the party and the purpose, so no two uses share a
keystream. CTR mode gives random access: word k of a stream is computed without the words before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16
_DOMAIN = b"secrobust/v1|"
_KEY_TAG = b"key|"
_SEED_TAG = b"seed|"
_WORD = 8
_BLOCK = 16
_PIECE = 1 << 20
_ZEROS = memoryview(bytes(_PIECE))
_BIG_ENDIAN = sys.byteorder == "big"


def fresh_seed(nbytes: int = SEED_BYTES) -> bytes:
    """A new secret seed from the operating system's CSPRNG."""
    if nbytes not in (16, 32):
        raise ValueError("seeds are 16 or 32 bytes")
    return secrets.token_bytes(nbytes)


def check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) not in (16, 32):
        size = len(seed) if hasattr(seed, "__len__") else "?"
        raise ValueError(f"a seed must be 16 or 32 bytes, got {type(seed).__name__} of length {size}")
    return bytes(seed)


def label(*parts: object) -> str:
    """Domain-separation label from its parts, e.g. label("share", round_id, "worker", 3)."""
    return "|".join(str(p) for p in parts)


def derive_key(seed: bytes, purpose: str) -> bytes:
    """The AES-128 key for one (seed, label) pair."""
    seed = check_seed(seed)
    return hmac.new(seed, _DOMAIN + bytes([len(seed)]) + _KEY_TAG + purpose.encode(), hashlib.sha256).digest()[:16]


def derive_seed(master: bytes, purpose: str) -> bytes:
    """A child seed for a labelled purpose (used to make whole runs reproducible from one seed)."""
    master = check_seed(master)
    return hmac.new(master, _DOMAIN + bytes([len(master)]) + _SEED_TAG + purpose.encode(), hashlib.sha256).digest()[:SEED_BYTES]


def keystream(seed: bytes, purpose: str, nbytes: int, offset: int = 0) -> bytes:
    """Bytes [offset, offset + nbytes) of the AES-128-CTR keystream for (seed, purpose)."""
    if nbytes < 0 or offset < 0:
        raise ValueError("keystream offset and length must be non-negative")
    first_block, skip = divmod(offset, _BLOCK)
    enc = Cipher(algorithms.AES(derive_key(seed, purpose)), modes.CTR(first_block.to_bytes(16, "big"))).encryptor()
    out = enc.update(bytes(skip + nbytes))
    return out[skip:]


def ring_stream(seed: bytes, purpose: str, count: int, offset: int = 0) -> np.ndarray:
    """Words [offset, offset + count) of the stream as uniform elements of Z_2^64."""
    out = np.empty(count, dtype=np.uint64)
    fill_ring_stream(seed, purpose, out, offset)
    return out


def _encryptor(seed: bytes, purpose: str, offset: int):
    """The AES-CTR encryptor of (seed, purpose), advanced to word ``offset`` of its stream."""
    if offset < 0:
        raise ValueError("keystream offset must be non-negative")
    first_block, skip = divmod(offset * _WORD, _BLOCK)
    enc = Cipher(algorithms.AES(derive_key(seed, purpose)), modes.CTR(first_block.to_bytes(16, "big"))).encryptor()
    if skip:
        enc.update(_ZEROS[:skip])
    return enc


def _check_out(out: np.ndarray) -> None:
    if out.dtype != np.uint64 or out.ndim != 1 or not out.flags.c_contiguous:
        raise ValueError("the keystream goes into a contiguous uint64 vector")


class RingStream:
    """The words of the (seed, purpose) stream in order from word ``offset``: each call takes the next
    ``out.size`` words, so a row read chunk after chunk keeps one AES key schedule and counter for the pass."""

    def __init__(self, seed: bytes, purpose: str, offset: int = 0) -> None:
        self._enc = _encryptor(seed, purpose, offset)

    def fill(self, out: np.ndarray) -> None:
        """Write the next words into the contiguous uint64 vector ``out``: encrypted in pieces of ``_PIECE``
        bytes straight into ``out`` (``update_into``, which needs room for a block less one byte past its
        output, so the last block's bytes are copied from ``update``); no buffer the size of ``out``."""
        _check_out(out)
        target = out.view(np.uint8)
        pos, size = 0, target.size
        while pos < size:
            piece = min(_PIECE, size - pos)
            if pos + piece + _BLOCK - 1 > size:
                piece = size - pos - _BLOCK
                if piece <= 0:
                    target[pos:] = np.frombuffer(self._enc.update(_ZEROS[:size - pos]), dtype=np.uint8)
                    break
            self._enc.update_into(_ZEROS[:piece], target[pos:pos + piece + _BLOCK - 1])
            pos += piece
        if _BIG_ENDIAN:
            out.byteswap(inplace=True)

    def subtract_from(self, out: np.ndarray) -> None:
        """out -= the next words (mod 2^64), in place, through one piece-sized scratch buffer that stays in
        cache, never a pad the size of ``out``."""
        _check_out(out)
        words = _PIECE // _WORD
        scratch = np.empty(min(words, out.size) + _BLOCK // _WORD, dtype=np.uint64)
        raw = scratch.view(np.uint8)
        for pos in range(0, out.size, words):
            part = out[pos:pos + words]
            self._enc.update_into(_ZEROS[:part.size * _WORD], raw)
            pad = scratch[:part.size]
            if _BIG_ENDIAN:
                pad.byteswap(inplace=True)
            np.subtract(part, pad, out=part)


def fill_ring_stream(seed: bytes, purpose: str, out: np.ndarray, offset: int = 0) -> None:
    """Write words [offset, offset + out.size) of the stream into the contiguous uint64 vector ``out``
    (``RingStream.fill``: no buffer the size of the output is allocated or zeroed, and no piece is copied)."""
    _check_out(out)
    RingStream(seed, purpose, offset).fill(out)


def subtract_ring_stream(seed: bytes, purpose: str, out: np.ndarray, offset: int = 0) -> None:
    """out -= words [offset, offset + out.size) of the stream (mod 2^64), in place (``RingStream.subtract_from``)."""
    _check_out(out)
    RingStream(seed, purpose, offset).subtract_from(out)


def ring_rows(seed: bytes, purpose: str, n_rows: int, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of an (n_rows, *) uniform ring matrix; row i uses purpose|row=i."""
    out = np.empty((n_rows, stop - start), dtype=np.uint64)
    for i in range(n_rows):
        fill_ring_stream(seed, label(purpose, "row", i), out[i], start)
    return out


def gaussian(seed: bytes, purpose: str, count: int) -> np.ndarray:
    """count standard normal samples from the keystream (Box-Muller on 53-bit uniforms in (0, 1])."""
    pairs = (count + 1) // 2
    words = ring_stream(seed, purpose, 2 * pairs)
    u = ((words >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    radius = np.sqrt(-2.0 * np.log(u[0::2]))
    angle = 2.0 * np.pi * u[1::2]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
