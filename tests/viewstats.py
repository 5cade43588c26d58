"""Statistics on what a party receives: are its words uniform, and alike for two different inputs?"""

import numpy as np
from scipy import stats


def byte_histograms(w: np.ndarray) -> np.ndarray:
    """256-bin histogram of each of the 8 byte positions of the words: shape (8, 256)."""
    b = w.view(np.uint8).reshape(-1, 8)
    return np.stack([np.bincount(b[:, k], minlength=256) for k in range(8)])


def uniform_pvalue(w: np.ndarray) -> float:
    return min(stats.chisquare(h).pvalue for h in byte_histograms(w))


def same_distribution_pvalue(w1: np.ndarray, w2: np.ndarray) -> float:
    h1, h2 = byte_histograms(w1), byte_histograms(w2)
    pvalues = []
    for k in range(8):
        table = np.stack([h1[k], h2[k]])
        table = table[:, table.sum(axis=0) > 0]
        pvalues.append(stats.chi2_contingency(table)[1] if table.shape[1] > 1 else 1.0)
    return min(pvalues)
