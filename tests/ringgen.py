"""Ring words for property tests: edge values of Z_2^64, random words, and random additive shares."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

M64 = 2**64
EDGES = [0, 1, 2, 2**62, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1]
words = st.one_of(st.sampled_from(EDGES), st.integers(0, M64 - 1))
vectors = hnp.arrays(np.uint64, st.integers(1, 150), elements=words)


def split(x: np.ndarray, mask_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Additive shares x = x0 + x1 mod 2^64 with a uniform x0."""
    x0 = np.random.default_rng(mask_seed).integers(0, M64 - 1, size=x.shape, dtype=np.uint64, endpoint=True)
    return x0, x - x0
