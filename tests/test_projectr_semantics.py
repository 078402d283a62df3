"""ProjectR's semantics, line by line, through the job and the real R.

Each test writes a target and a cart, runs `ProjectRJob` (R engine, the default) as the
runtime would, reads the CSV it wrote and compares it with what projectR computes
(limma::lmFit, nnls::nnls, the prcomp method; see projectr_fixtures.ROracle) or with a
result small enough to check by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from projectr_fixtures import (
    ROracle,
    generated,
    output_path,
    payload,
    read_projection,
    run_job,
    write_cart,
    write_h5ad_target,
    write_text_target,
)

from gearqueue.jobs.projectr import ProjectRJob

pytestmark = pytest.mark.slow

RTOL = 1e-8


@pytest.fixture(scope="module")
def oracle() -> ROracle:
    return ROracle()


@pytest.fixture
def job(settings) -> ProjectRJob:
    job = ProjectRJob(settings)
    job.warm_up()
    return job


@pytest.fixture(autouse=True)
def projections_dir(settings) -> None:
    settings.paths.projections_dir.mkdir(parents=True, exist_ok=True)


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index}" for index in range(count)]


def put(job: ProjectRJob, target: np.ndarray, genes: list[str], loadings: np.ndarray | None,
        loading_genes: list[str], *, samples: list[str] | None = None,
        patterns: list[str] | None = None, target_file: str = "ds.csv") -> None:
    paths = job.settings.paths
    samples = samples or names("s", target.shape[1])
    path = paths.datasets_dir / target_file
    if path.suffix == ".h5ad":
        write_h5ad_target(path, genes, samples, target)
    else:
        write_text_target(path, genes, samples, target)
    width = 1 if loadings is None else loadings.shape[1]
    write_cart(paths.carts_dir / "cart.cart.tab", loading_genes,
               patterns or names("P", width), loadings)


def projected(job: ProjectRJob, algorithm: str = "nmf", **fields) -> tuple[dict, np.ndarray]:
    """(reply, patterns x samples result) of one run that must succeed."""
    reply = run_job(job, payload(algorithm, **fields))
    assert reply["success"] == 1, reply
    return reply, read_projection(output_path(job.settings, reply))[2].T


def pvalues(job: ProjectRJob, reply: dict) -> np.ndarray:
    return read_projection(output_path(job.settings, reply, suffix=".pval.csv"))[2].T


# --- nmf: limma::lmFit ---------------------------------------------------------------------


def test_nmf_equals_limma_lmfit_coefficients_and_pvalues(job, oracle):
    rng = np.random.default_rng(1)
    loadings, _, target = generated(rng, 80, 12, 4, noise=0.5)
    genes = names("ENSG", 80)
    put(job, target[:70], genes[:70], loadings[10:], genes[10:])
    reply, coef = projected(job, full_output=True)
    expected = oracle.project("oracle_nmf", target[:70], genes[:70], loadings[10:], genes[10:])
    np.testing.assert_allclose(coef, expected["coef"], rtol=RTOL)
    np.testing.assert_allclose(pvalues(job, reply), expected["pval"], rtol=RTOL)
    assert (reply["num_common_genes"], reply["num_dataset_genes"],
            reply["num_genecart_genes"]) == (60, 70, 70)
    assert reply["message"] == ("Found 60 common genes between the target dataset (70 genes) "
                                "and the pattern file (70 genes).")


def test_nmf_recovers_known_pattern_weights(job):
    rng = np.random.default_rng(2)
    loadings, truth, target = generated(rng, 400, 25, 5, noise=0.01)
    genes = names("g", 400)
    put(job, target, genes, loadings, genes)
    _, coef = projected(job)
    np.testing.assert_allclose(coef, truth, atol=0.01)


def test_pvalues_are_normal_tails_that_underflow_to_zero(job, oracle):
    rng = np.random.default_rng(3)
    loadings, _, target = generated(rng, 50, 4, 2, noise=1e-9)
    genes = names("g", 50)
    put(job, target, genes, loadings, genes)
    reply, _ = projected(job, full_output=True)
    pval = pvalues(job, reply)
    assert (pval == 0.0).all()  # |t| > 38.5: 2 * pnorm(-|t|) is exactly 0, as in R
    np.testing.assert_array_equal(
        pval, oracle.project("oracle_nmf", target, genes, loadings, genes)["pval"])


def test_missing_target_values_are_dropped_for_that_sample_only(job, oracle):
    rng = np.random.default_rng(4)
    loadings, _, target = generated(rng, 40, 8, 3, noise=0.3)
    genes = names("g", 40)
    target[3, 2] = np.nan
    target[5, 4] = np.inf
    target[7, 4] = -np.inf
    target[:, 6] = np.nan  # a sample with nothing left
    loadings[9] = 0.0  # a gene no pattern uses: its NaN must still be dropped (df changes)
    target[9, 0] = np.nan
    extra = np.full((1, 8), 1.0)
    extra[0, 1] = np.nan  # missing value in a gene the cart does not have: no effect
    put(job, np.vstack([target, extra]), [*genes, "unmatched"], loadings, genes)
    reply, coef = projected(job, full_output=True)
    expected = oracle.project("oracle_nmf", target, genes, loadings, genes)
    np.testing.assert_allclose(coef, expected["coef"], rtol=RTOL)
    np.testing.assert_allclose(pvalues(job, reply), expected["pval"], rtol=RTOL)
    assert np.isnan(coef[:, 6]).all() and not np.isnan(np.delete(coef, 6, axis=1)).any()
    complete = [1, 3, 5, 7]
    clean = oracle.project("oracle_nmf", target[:, complete], genes, loadings, genes)
    np.testing.assert_allclose(coef[:, complete], clean["coef"], rtol=RTOL)
    assert "4 sample(s) had missing values" in reply["message"]
    assert "1 sample(s) have NA values" in reply["message"]


def test_rank_deficient_loadings_give_na_and_name_the_patterns(job, oracle):
    rng = np.random.default_rng(5)
    loadings, _, target = generated(rng, 30, 6, 4, noise=0.2)
    loadings[:, 2] = loadings[:, 0] + 2 * loadings[:, 1]  # collinear
    loadings[:, 3] = 0.0  # all zero
    genes = names("g", 30)
    put(job, target, genes, loadings, genes, patterns=["Alpha", "Beta", "Gamma", "Delta"])
    reply, coef = projected(job, full_output=True)
    expected = oracle.project("oracle_nmf", target, genes, loadings, genes)
    assert np.isnan(coef[2:]).all() and np.isnan(expected["coef"][2:]).all()
    np.testing.assert_allclose(coef, expected["coef"], rtol=RTOL)
    np.testing.assert_allclose(pvalues(job, reply), expected["pval"], rtol=RTOL)
    assert "left NA: 'Gamma', 'Delta'." in reply["message"]


def test_as_many_genes_as_patterns_fits_exactly_with_na_pvalues(job, oracle):
    loadings = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    truth = np.array([[1.0, 2.0], [3.0, 0.5], [-1.0, 4.0]])
    genes = ["a", "b", "c"]
    put(job, loadings @ truth, genes, loadings, genes)
    reply, coef = projected(job, full_output=True)
    np.testing.assert_allclose(coef, truth, rtol=1e-12)
    assert np.isnan(pvalues(job, reply)).all()
    expected = oracle.project("oracle_nmf", loadings @ truth, genes, loadings, genes)
    assert np.isnan(expected["pval"]).all()


def test_all_zero_sample_gives_zero_weights_and_nan_pvalues(job):
    rng = np.random.default_rng(6)
    loadings, _, target = generated(rng, 20, 3, 2)
    target[:, 1] = 0.0
    genes = names("g", 20)
    put(job, target, genes, loadings, genes)
    reply, coef = projected(job, full_output=True)
    assert (coef[:, 1] == 0).all()
    assert np.isnan(pvalues(job, reply)[:, 1]).all()


def test_integer_targets_are_projected_as_numbers(job, oracle):
    rng = np.random.default_rng(7)
    loadings = rng.integers(0, 5, size=(25, 2)).astype(float)
    target = rng.integers(0, 100, size=(25, 4)).astype(float)
    genes = names("g", 25)
    path = job.settings.paths.datasets_dir / "ds.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("gene,a,b,c,d\n" + "".join(
        f"{gene},{','.join(str(int(v)) for v in row)}\n" for gene, row in zip(
            genes, target, strict=True)))
    write_cart(job.settings.paths.carts_dir / "cart.cart.tab", genes, ["P0", "P1"], loadings)
    _, coef = projected(job)
    np.testing.assert_allclose(
        coef, oracle.project("oracle_nmf", target, genes, loadings, genes)["coef"], rtol=RTOL)


# --- gene matching ---------------------------------------------------------------------------


def test_gene_matching_is_exact_and_first_row_wins_on_both_sides(job, oracle):
    rng = np.random.default_rng(8)
    target_genes = ["g1", "G1", "g2 ", " g3", "ENSG5.17", "g4", "g2", "g6", "g4", "g7"]
    cart_genes = ["g1", "g2", "g3", "ENSG5", "g4", "g4", "g6", "g7", "g1", "g8"]
    target = rng.normal(size=(10, 5))
    loadings = rng.gamma(2.0, 1.0, size=(10, 2))
    loadings[5] = loadings[8] = 1e6  # later duplicates: ignored whatever they hold
    target[8] = 1e6  # the second "g4" row of the target: ignored
    put(job, target, target_genes, loadings, cart_genes)
    reply, coef = projected(job)
    # matched, in target order: g1, g4, g2, g6, g7 (case, spaces and versions differ)
    assert reply["num_common_genes"] == 5
    assert reply["num_genecart_genes"] == 8 and reply["num_dataset_genes"] == 10
    rows, cart_rows = [0, 5, 6, 7, 9], [0, 4, 1, 6, 7]
    expected = oracle.project("oracle_nmf", target[rows], [target_genes[i] for i in rows],
                              loadings[cart_rows], [cart_genes[i] for i in cart_rows])
    np.testing.assert_allclose(coef, expected["coef"], rtol=RTOL)
    np.testing.assert_allclose(
        coef, oracle.project("oracle_nmf", target, target_genes, loadings, cart_genes)["coef"],
        rtol=RTOL)


def test_row_order_does_not_change_the_result(job, settings):
    rng = np.random.default_rng(9)
    loadings, _, target = generated(rng, 50, 6, 3, noise=0.3)
    genes = names("g", 50)
    put(job, target, genes, loadings, genes)
    _, first = projected(job, projection_id="first", full_output=True)
    order = rng.permutation(50)
    put(job, target[order], [genes[i] for i in order], loadings[order[::-1]],
        [genes[i] for i in order[::-1]])
    _, second = projected(job, projection_id="second")
    np.testing.assert_allclose(second, first, rtol=1e-12)


# --- fixednmf, pca, pca_centered, binary ----------------------------------------------------


def test_fixednmf_equals_nnls_and_recovers_non_negative_weights(job, oracle):
    rng = np.random.default_rng(10)
    loadings, truth, target = generated(rng, 200, 10, 4, noise=0.01)
    truth[1, :4] = 0.0
    target = loadings @ truth + rng.normal(0, 0.01, size=target.shape)
    target[:, 9] = -loadings[:, 0]  # best unconstrained fit is negative: clamped at 0
    genes = names("g", 200)
    put(job, target, genes, loadings, genes)
    _, coef = projected(job, "fixednmf")
    expected = oracle.project("oracle_nnls", target, genes, loadings, genes)["coef"]
    np.testing.assert_allclose(coef, expected, rtol=RTOL, atol=1e-12)
    assert (coef >= 0).all() and (coef[:, 9] == 0).all()
    np.testing.assert_allclose(coef[:, :9], truth[:, :9], atol=0.01)


def test_fixednmf_drops_missing_values_per_sample(job, oracle):
    rng = np.random.default_rng(11)
    loadings, _, target = generated(rng, 30, 4, 3)
    target[2, 1] = np.nan
    genes = names("g", 30)
    put(job, target, genes, loadings, genes)
    _, coef = projected(job, "fixednmf")
    keep = [i for i in range(30) if i != 2]
    sample = oracle.project("oracle_nnls", target[keep][:, [1]], [genes[i] for i in keep],
                            loadings[keep], [genes[i] for i in keep])["coef"]
    np.testing.assert_allclose(coef[:, [1]], sample, rtol=RTOL, atol=1e-12)


def test_pca_is_gears_plain_dot_product_with_missing_as_zero(job):
    rng = np.random.default_rng(12)
    target = rng.normal(5.0, 1.0, size=(30, 5))
    target[4, 2] = np.nan
    loadings = rng.normal(size=(30, 3))
    genes = names("g", 30)
    put(job, target, genes, loadings, genes)
    _, coef = projected(job, "pca")
    np.testing.assert_allclose(coef, loadings.T @ np.nan_to_num(target, nan=0.0), rtol=1e-12)


def test_pca_centered_equals_projectr_prcomp_method_and_ignores_chunking(settings, oracle):
    rng = np.random.default_rng(13)
    target = rng.normal(8.0, 2.0, size=(40, 9))
    loadings = np.linalg.qr(rng.normal(size=(40, 3)))[0]
    genes = names("g", 40)
    expected = oracle.project("oracle_prcomp", target, genes, loadings, genes)["coef"]
    for index, chunk_bytes in enumerate((1 << 20, 1)):  # one chunk; one sample per chunk
        job = ProjectRJob(settings, chunk_bytes=chunk_bytes)
        put(job, target, genes, loadings, genes)
        _, coef = projected(job, "pca_centered", projection_id=f"run{index}")
        np.testing.assert_allclose(coef, expected, rtol=RTOL, atol=1e-12)


def test_pca_centered_propagates_missing_values_as_projectr_does(job):
    rng = np.random.default_rng(14)
    target = rng.normal(size=(10, 4))
    target[3, 1] = np.nan
    genes = names("g", 10)
    put(job, target, genes, rng.normal(size=(10, 2)), genes)
    reply, coef = projected(job, "pca_centered")
    assert np.isnan(coef).all()
    assert "every value is NA" in reply["message"]


def test_binary_counts_expressed_genes_with_nonzero_weight(job):
    target = np.array([[0.0, 1.0, 2.0],
                       [3.0, 0.0, np.nan],
                       [-1.0, 0.0, 0.0],
                       [5.0, 5.0, 5.0]])
    loadings = np.array([[1.0, 0.0],
                         [2.0, 0.5],
                         [0.0, 3.0],
                         [0.1, 0.0]])
    genes = ["a", "b", "c", "d"]
    put(job, target, genes, loadings, genes)
    reply, coef = projected(job, "binary")
    # pattern 0 uses a, b, d; pattern 1 uses b, c (negative counts, NaN does not)
    np.testing.assert_array_equal(coef, [[2, 2, 2], [2, 0, 0]])
    text = output_path(job.settings, reply).read_text().splitlines()
    assert text[1] == "s0,2,2"


# --- zscore, S = 1, names, file formats, unweighted carts -----------------------------------


def zscored(target: np.ndarray) -> np.ndarray:
    """gEAR's z-score: per gene over samples, ddof 1, NaN ignored, then NaN -> 0."""
    mean = np.nanmean(target, axis=1, keepdims=True)
    sd = np.nanstd(target, axis=1, ddof=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (target - mean) / sd
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def test_zscore_standardises_each_gene_over_all_samples(settings, oracle):
    rng = np.random.default_rng(15)
    loadings, _, target = generated(rng, 30, 10, 3, noise=0.5)
    target[4] = 7.1  # constant gene: z = 0
    target[6, 3] = np.nan
    genes = names("g", 30)
    expected = oracle.project("oracle_nmf", zscored(target), genes, loadings, genes)["coef"]
    for index, chunk_bytes in enumerate((1 << 20, 1)):
        job = ProjectRJob(settings, chunk_bytes=chunk_bytes)
        put(job, target, genes, loadings, genes)
        reply, coef = projected(job, zscore=True, projection_id=f"z{index}")
        np.testing.assert_allclose(coef, expected, rtol=1e-9, atol=1e-12)
        assert "missing values" not in reply["message"]


@pytest.mark.parametrize("algorithm", ["nmf", "fixednmf", "pca", "binary"])
def test_one_sample_gives_the_same_result_as_in_a_larger_run(job, algorithm):
    rng = np.random.default_rng(16)
    loadings, _, target = generated(rng, 40, 5, 3, noise=0.3)
    genes = names("g", 40)
    put(job, target, genes, loadings, genes)
    _, everything = projected(job, algorithm, projection_id="all")
    put(job, target[:, [3]], genes, loadings, genes, samples=["only"])
    _, single = projected(job, algorithm, projection_id="one")
    np.testing.assert_allclose(single[:, 0], everything[:, 3], rtol=1e-10)


@pytest.mark.parametrize("target_file", ["ds.csv", "ds.tsv", "ds.h5ad"])
def test_ids_come_out_exactly_as_they_went_in(job, target_file):
    samples = ["1", "s.2", "X 3", "cell-4", "5e3", "TRUE", "NA", "Gene with space", "a,b"]
    genes = ["1", "5e3", "TRUE", "HLA-A*02", "Gene with space", "g.6", "X 7", "NA"]
    patterns = ["1", "Pattern.2", "P 3"]
    rng = np.random.default_rng(17)
    loadings, _, target = generated(rng, len(genes), len(samples), 3)
    put(job, target, genes, loadings, genes, samples=samples, patterns=patterns,
        target_file=target_file)
    reply, _ = projected(job)
    got_samples, got_patterns, _ = read_projection(output_path(job.settings, reply))
    assert got_samples == samples and got_patterns == patterns
    assert reply["num_common_genes"] == len(genes)


@pytest.mark.parametrize("layout,dtype", [("dense", np.float64), ("dense", np.float32),
                                          ("csr", np.float64), ("csc", np.float32)])
def test_h5ad_targets_give_the_same_result_as_text(settings, oracle, layout, dtype):
    rng = np.random.default_rng(18)
    loadings, _, target = generated(rng, 60, 14, 3, noise=0.3)
    target[rng.random(target.shape) < 0.4] = 0.0  # sparse-looking
    target = target.astype(dtype).astype(np.float64)
    genes = names("g", 60)
    order = rng.permutation(60)  # the file's gene order differs from the cart's
    write_h5ad_target(settings.paths.datasets_dir / "ds.h5ad", [genes[i] for i in order],
                      names("s", 14), target[order], layout=layout, dtype=dtype)
    write_cart(settings.paths.carts_dir / "cart.cart.tab", genes[5:], names("P", 3),
               loadings[5:])
    expected = oracle.project("oracle_nmf", target, genes, loadings[5:], genes[5:])["coef"]
    for index, chunk_bytes in enumerate((1 << 20, 1000)):  # whole; a few samples per chunk
        job = ProjectRJob(settings, chunk_bytes=chunk_bytes)
        _, coef = projected(job, projection_id=f"h{index}")
        np.testing.assert_allclose(coef, expected, rtol=RTOL)


def test_unweighted_cart_weighs_every_listed_gene_one(job):
    target = np.array([[1.0, 0.0], [2.0, 4.0], [6.0, 0.0], [100.0, 100.0]])
    genes = ["a", "b", "c", "d"]
    put(job, target, genes, None, ["a", "b", "c", "z"])
    reply, coef = projected(job, "nmf", scope="unweighted-list")
    np.testing.assert_allclose(coef, [[3.0, 4.0 / 3.0]])  # least squares on ones: the mean
    assert read_projection(output_path(job.settings, reply))[1] == ["unweighted"]
    _, counts = projected(job, "binary", scope="unweighted-list")
    np.testing.assert_array_equal(counts, [[3, 1]])


def test_fixednmf_leaves_not_estimable_patterns_na_like_nmf(job, oracle):
    rng = np.random.default_rng(19)
    loadings, _, target = generated(rng, 40, 5, 3, noise=0.05)
    loadings[:, 1] = 3 * loadings[:, 0]
    genes = names("g", 40)
    put(job, target, genes, loadings, genes, patterns=["A", "B", "C"])
    reply, coef = projected(job, "fixednmf")
    assert np.isnan(coef[1]).all()
    expected = oracle.project("oracle_nnls", target, genes, loadings[:, [0, 2]], genes)["coef"]
    np.testing.assert_allclose(coef[[0, 2]], expected, rtol=RTOL, atol=1e-12)
    assert "left NA: 'B'." in reply["message"]


@pytest.mark.parametrize("noise", [0.03, 1e-4])  # RSS/||d||^2 ~ 2e-6 and ~ 2e-11
def test_pvalues_of_close_fits_equal_limma(job, oracle, noise):
    rng = np.random.default_rng(20)
    loadings, truth, _ = generated(rng, 200, 10, 4)
    truth[0] = 0.0  # an absent pattern: |t| ~ 1, so its p-value depends on sigma
    target = loadings @ truth + rng.normal(0.0, noise, size=(200, 10))
    genes = names("g", 200)
    put(job, target, genes, loadings, genes)
    reply, _ = projected(job, full_output=True)
    pval = pvalues(job, reply)
    assert 0.01 < np.median(pval[0]) < 0.99
    expected = oracle.project("oracle_nmf", target, genes, loadings, genes)["pval"]
    np.testing.assert_allclose(pval, expected, rtol=RTOL)
