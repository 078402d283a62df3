"""The NumPy engine agrees with the R engine (the reference) to 1e-8 on the same inputs,
its rank decisions are R's own, and neither engine's result depends on the chunk size."""

from __future__ import annotations

import numpy as np
import pytest
from projectr_fixtures import ROracle, generated

from gearqueue.errors import ConfigError
from gearqueue.matrices.targets import MatrixTarget
from gearqueue.projectr.engine import make_engine
from gearqueue.projectr.linpack import estimable_columns
from gearqueue.projectr.projection import project

pytestmark = pytest.mark.slow

RTOL = 1e-8
ALGORITHMS = ["nmf", "fixednmf", "pca", "pca_centered", "binary"]


@pytest.fixture(scope="module")
def engines():
    r, numpy = make_engine("r"), make_engine("numpy")
    r.start()
    numpy.start()
    return r, numpy


def run(engine, target: np.ndarray, loadings: np.ndarray, algorithm: str, *,
        zscore: bool = False, chunk_bytes: int = 1 << 20):
    genes = [f"g{i}" for i in range(target.shape[0])]
    source = MatrixTarget(genes, [f"s{i}" for i in range(target.shape[1])], target.T)
    return project(source, np.arange(len(genes)), loadings, algorithm, zscore=zscore,
                   full_output=True, engine=engine, chunk_bytes=chunk_bytes)


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(20)
    loadings, _, target = generated(rng, 120, 30, 6, noise=0.5)
    missing = target.copy()
    missing[rng.random(missing.shape) < 0.03] = np.nan
    missing[:, 4] = np.nan
    missing[10:20, 7] = np.nan  # samples 7 and 8 miss the same genes: fitted together
    missing[10:20, 8] = np.nan
    missing[30, 11] = np.inf
    loadings = loadings.copy()
    loadings[40] = 0.0  # an unused gene: its NaN must still be found (NaN * 0 is NaN)
    missing[40, 12] = np.nan
    collinear = loadings.copy()
    collinear[:, 3] = collinear[:, 1] - 0.5 * collinear[:, 2]
    collinear[:, 5] = 0.0
    zero_sample = target.copy()
    zero_sample[:, 2] = 0.0
    return {"plain": (target, loadings), "missing": (missing, loadings),
            "collinear": (target, collinear), "collinear+missing": (missing, collinear),
            "zero sample": (zero_sample, loadings),
            "square": (target[:6], loadings[:6])}


@pytest.mark.parametrize("case", list(cases()))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_numpy_engine_agrees_with_r(engines, algorithm, case):
    target, loadings = cases()[case]
    r_result = run(engines[0], target, loadings, algorithm)
    numpy_result = run(engines[1], target, loadings, algorithm)
    assert r_result.not_estimable == numpy_result.not_estimable
    np.testing.assert_allclose(numpy_result.coef, r_result.coef, rtol=RTOL, atol=1e-10)
    if r_result.pval is not None:
        assert_pvalues_close(numpy_result.pval, r_result.pval)
    assert (numpy_result.incomplete_samples, numpy_result.na_samples) == (
        r_result.incomplete_samples, r_result.na_samples)


@pytest.mark.parametrize("zscore", [False, True])
@pytest.mark.parametrize("name", ["r", "numpy"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chunking_does_not_change_the_result(engines, name, algorithm, zscore):
    engine = engines[0] if name == "r" else engines[1]
    target, loadings = cases()["missing" if algorithm in ("nmf", "fixednmf") else "plain"]
    whole = run(engine, target, loadings, algorithm, zscore=zscore)
    for chunk_bytes in (1, 7 * 120 * 8):  # one sample per chunk; 7 (uneven last chunk)
        chunked = run(engine, target, loadings, algorithm, zscore=zscore,
                      chunk_bytes=chunk_bytes)
        np.testing.assert_allclose(chunked.coef, whole.coef, rtol=1e-12, atol=1e-12)


def test_engines_agree_at_scale_with_many_missing_patterns(engines):
    rng = np.random.default_rng(21)
    loadings, _, target = generated(rng, 2000, 300, 20, noise=1.0)
    target[rng.random(target.shape) < 0.001] = np.nan
    r_result = run(engines[0], target, loadings, "nmf", chunk_bytes=2000 * 8 * 64)
    numpy_result = run(engines[1], target, loadings, "nmf", chunk_bytes=2000 * 8 * 64)
    np.testing.assert_allclose(numpy_result.coef, r_result.coef, rtol=RTOL)
    assert_pvalues_close(numpy_result.pval, r_result.pval)


def assert_pvalues_close(actual: np.ndarray, desired: np.ndarray) -> None:
    """rtol 1e-8 on p, but on log p in the far tail: there p ~ exp(-t^2/2) multiplies a
    relative difference of sigma by t^2 (1e-11 becomes 1e-8 at p ~ 1e-250), and below
    ~1e-300 (subnormals, then the underflow to 0 at |t| ~ 38.5) digits run out."""
    tail = (desired < 1e-100) | (actual < 1e-100)
    np.testing.assert_allclose(actual[~tail], desired[~tail], rtol=RTOL, atol=1e-300)
    np.testing.assert_allclose(np.log(np.maximum(actual[tail], 1e-300)),
                               np.log(np.maximum(desired[tail], 1e-300)), rtol=RTOL)


def rank_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(22)
    base = rng.normal(size=(30, 5))
    cases = [base]
    for column, scale in ((2, 0.0), (0, 0.0), (4, 1e-9), (3, 1e-6), (1, 1e-8)):
        x = base.copy()
        x[:, column] = x[:, (column + 1) % 5] * 2 + scale * rng.normal(size=30)
        cases.append(x)
    zero = base.copy()
    zero[:, 1] = 0.0
    wide = rng.normal(size=(3, 5))
    duplicated = np.hstack([base[:, :2], base[:, :2], base[:, 2:]])
    return [*cases, zero, wide, duplicated]


@pytest.mark.parametrize("index", range(len(rank_cases())))
def test_linpack_port_decides_rank_and_pivot_like_r(index):
    x = rank_cases()[index]
    pivot, rank = ROracle().rank(x)
    estimable, not_estimable = estimable_columns(x)
    assert list(estimable) == pivot[:rank]
    assert sorted(not_estimable) == sorted(pivot[rank:])


def test_unknown_engine_is_a_configuration_error():
    with pytest.raises(ConfigError, match="unknown ProjectR engine 'julia'"):
        make_engine("julia")
