"""Reading targets and carts: text quirks, h5ad layouts, and the request's own rules."""

from __future__ import annotations

import hashlib
import uuid

import h5py
import numpy as np
import pytest

from gearqueue.matrices.h5ad import H5adTarget
from gearqueue.matrices.tables import read_text_matrix
from gearqueue.matrices.targets import MatrixTarget, open_target
from gearqueue.projectr.carts import read_cart
from gearqueue.projectr.matching import match_genes
from gearqueue.projectr.request import default_projection_id, parse_request

pytestmark = pytest.mark.slow


def read_all(target) -> np.ndarray:
    out = np.empty((len(target.sample_ids), len(target.gene_ids)))
    target.read(0, len(target.sample_ids), np.arange(len(target.gene_ids)), out)
    return out


def test_missing_value_spellings_become_nan(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("g,a,b,c,d,e,f,g2,h\nx,,NA,NaN,nan,N/A,NULL, NA ,1e-3\n")
    table = read_text_matrix(path, ",", what="dataset")
    assert np.isnan(table.values[0, :7]).all() and table.values[0, 7] == 0.001


def test_ids_keep_quotes_spaces_and_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes('\ufeffgene,"s,1", s2 \n" g 1",1,2\n"a""b",3,4\n'.encode())
    target = open_target(tmp_path, "t")
    assert target.sample_ids == ["s,1", " s2 "]
    assert target.gene_ids == [" g 1", 'a"b']
    np.testing.assert_array_equal(read_all(target), [[1, 3], [2, 4]])


def test_target_files_are_looked_for_h5ad_first(tmp_path):
    (tmp_path / "t.tsv").write_text("g\ts\nx\t1\n")
    (tmp_path / "t.csv").write_text("g,s\ny,2\n")
    assert open_target(tmp_path, "t").gene_ids == ["y"]


def test_unweighted_cart_ignores_weight_columns(tmp_path):
    (tmp_path / "cart.c.tab").write_text("id\tsym\tP0\na\tA\tnot-a-number\nb\n")
    cart = read_cart(tmp_path, "c", "unweighted-list")
    assert cart.gene_ids == ["a", "b"] and cart.pattern_names == ["unweighted"]
    np.testing.assert_array_equal(cart.values, [[1.0], [1.0]])


def test_matching_keeps_first_occurrences_in_target_order():
    match = match_genes(["c", "a", "c", "b", "A"], ["a", "b", "a", "c", "d"])
    assert match.gene_ids == ["c", "a", "b"]
    assert match.target_rows.tolist() == [0, 1, 3]
    assert match.loading_rows.tolist() == [3, 0, 1]


def test_h5ad_csr_with_repeated_entries_sums_them_and_reads_only_asked_genes(tmp_path):
    path = tmp_path / "t.h5ad"
    with h5py.File(path, "w") as file:
        for axis, names in (("obs", ["s0", "s1"]), ("var", ["g0", "g1", "g2"])):
            group = file.create_group(axis)
            group.attrs["_index"] = "_index"
            group.create_dataset("_index", data=np.array(names, dtype=h5py.string_dtype()))
        x = file.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "shape": [2, 3]})
        x["indptr"] = [0, 3, 4]
        x["indices"] = [0, 2, 2, 1]
        x["data"] = [1.0, 2.0, 5.0, 7.0]
    target = H5adTarget(path)
    out = np.full((2, 2), np.nan)
    target.read(0, 2, np.array([2, 1]), out)
    np.testing.assert_array_equal(out, [[7.0, 0.0], [0.0, 7.0]])
    target.close()


def test_h5ad_legacy_compound_tables_and_numeric_names(tmp_path):
    path = tmp_path / "t.h5ad"
    with h5py.File(path, "w") as file:
        file["X"] = np.arange(6, dtype=np.int32).reshape(2, 3)
        file["obs"] = np.array([(b"1",), (b"TRUE",)], dtype=[("index", "S4")])
        group = file.create_group("var")
        group.attrs["_index"] = "_index"
        group["_index"] = np.array([10, 20, 30])
    target = H5adTarget(path)
    assert target.sample_ids == ["1", "TRUE"] and target.gene_ids == ["10", "20", "30"]
    np.testing.assert_array_equal(read_all(target), [[0, 1, 2], [3, 4, 5]])
    target.close()


def test_matrix_target_reads_a_gene_subset_in_the_asked_order():
    target = MatrixTarget(["a", "b", "c"], ["s0", "s1"], np.array([[1.0, 2.0, 3.0],
                                                                    [4.0, 5.0, 6.0]]))
    out = np.empty((1, 2))
    target.read(1, 2, np.array([2, 0]), out)
    np.testing.assert_array_equal(out, [[6.0, 4.0]])


def test_default_projection_id_is_gears_and_zscore_makes_another():
    gear = str(uuid.UUID(hashlib.md5(b"d-c-pca").hexdigest()))
    assert default_projection_id("d", "c", "pca", False) == gear
    assert default_projection_id("d", "c", "pca", True) != gear
    request = parse_request({"dataset_id": "d", "genecart_id": "c", "algorithm": "pca",
                             "zscore": "TRUE", "full_output": 1, "scope": None})
    assert request.projection_id != gear and request.zscore and request.full_output
    assert request.scope == "weighted-list"


@pytest.mark.parametrize("value", [True, "1", "yes", "on", 1])
def test_boolean_spellings(value):
    request = parse_request({"dataset_id": "d", "genecart_id": "c", "algorithm": "nmf",
                             "zscore": value})
    assert request.zscore is True
