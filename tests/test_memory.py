"""n = 50 workers, d = 1e6: the in-process round stays inside 4 GiB (peak RSS of a fresh process)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import resource, numpy as np, secrobust
    x = np.random.default_rng(0).standard_normal((50, 1_000_000), dtype=np.float32).astype(np.float64) * 1e-3
    res = secrobust.aggregate(x, "krum", 2)
    assert res.weights.sum() == 1.0
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_n50_d1e6_fits_in_4_gib():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    peak_kib = int(out.stdout.strip().splitlines()[-1])
    assert peak_kib < 4 * 2**20, f"peak RSS {peak_kib / 2**20:.2f} GiB"
