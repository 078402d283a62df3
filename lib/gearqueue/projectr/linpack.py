"""R's rank decision for least squares (LINPACK dqrdc2 with limited pivoting), in NumPy.

lm.fit, and so limma::lmFit and projectR, call a column not estimable when its norm,
after removing the earlier columns, falls below 1e-7 times its original norm; such a
column is moved to the end and its coefficient is NA. LAPACK's QR has no such rule, so
the NumPy engine uses this port to decide the same columns as R, then solves the
estimable ones with LAPACK. Written from R's src/appl/dqrdc2.f (Householder reflections,
norms downdated and recomputed after a large reduction).
"""

from __future__ import annotations

import numpy as np

#: lm.fit's tolerance.
TOLERANCE = 1e-7


def estimable_columns(x: np.ndarray, tol: float = TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """(estimable columns in pivot order, not estimable columns), 0-based, as R decides."""
    a = np.array(x, dtype=np.float64, order="F")
    n, p = a.shape
    pivot = list(range(p))
    norms = np.linalg.norm(a, axis=0) if n else np.zeros(p)
    original = norms.copy()
    reference = np.where(original == 0, 1.0, original)  # work(j, 2)
    k = p  # columns [k, p) have been moved to the end as negligible
    for col in range(min(n, p)):
        while col < k and norms[col] < reference[col] * tol:
            order = [*range(col + 1, p), col]
            a[:, col:] = a[:, order]
            for values in (norms, original, reference):
                values[col:] = values[order]
            pivot[col:] = [pivot[j] for j in order]
            k -= 1
        if col == n - 1:
            continue
        v = a[col:, col]
        nrmxl = np.linalg.norm(v)
        if nrmxl == 0:
            continue
        if v[0] != 0:
            nrmxl = np.copysign(nrmxl, v[0])
        v /= nrmxl
        v[0] += 1.0
        rest = a[col:, col + 1:]
        rest -= np.outer(v, (v @ rest) / v[0])
        for j in range(col + 1, p):
            if norms[j] == 0:
                continue
            t = max(1.0 - (abs(a[col, j]) / norms[j]) ** 2, 0.0)
            if abs(t) >= 1e-6:
                norms[j] *= np.sqrt(t)
            else:
                norms[j] = np.linalg.norm(a[col + 1:, j])
                original[j] = norms[j]
        a[col, col] = -nrmxl
    rank = min(k, n)
    return np.array(pivot[:rank], dtype=np.int64), np.array(sorted(pivot[rank:]),
                                                            dtype=np.int64)
