"""Exact k-NN of diva_tf.evaluation.knn: canonical tie order, the self-match rule, chunking."""

import numpy as np
import pytest

import reference_metrics as ref
from diva_tf.evaluation.knn import ExactIndex, drop_self, iter_neighbours, nearest_neighbours


@pytest.fixture(scope="module")
def grid():
    return ref.grid_embeddings(160, 12, seed=3)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_self_neighbours_match_brute_force_with_ties(grid, k):
    emb, _ = grid
    assert nearest_neighbours(emb, k).tolist() == ref.neighbours(emb, k)


@pytest.mark.parametrize("k", [1, 7, 30])
def test_gallery_neighbours_match_brute_force_with_ties(grid, k):
    emb, _ = grid
    query, gallery = emb[:50], emb[50:]
    assert nearest_neighbours(query, k, gallery).tolist() == ref.neighbours(query, k, gallery)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_search_equals_unchunked(grid, chunk):
    emb, _ = grid
    whole = nearest_neighbours(emb, 12, chunk_size=len(emb))
    np.testing.assert_array_equal(nearest_neighbours(emb, 12, chunk_size=chunk), whole)
    starts = [start for start, _ in iter_neighbours(emb, 12, chunk_size=chunk)]
    assert starts == list(range(0, len(emb), chunk))


def test_chunked_search_equals_unchunked_on_continuous_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(nearest_neighbours(x, 20, chunk_size=128),
                                  nearest_neighbours(x, 20, chunk_size=500))


def test_ties_rank_lower_index_first_even_at_the_cut():
    # five identical vectors: every k-subset is equally near; the lowest ids must win
    emb = np.tile(np.array([[1.0, 0.0]], np.float32), (5, 1))
    emb = np.vstack([emb, [[0.0, 1.0]]]).astype(np.float32)
    sims, ids = ExactIndex(emb).search(emb[:1], 3)
    assert ids.tolist() == [[0, 1, 2]] and sims.tolist() == [[1.0, 1.0, 1.0]]
    assert nearest_neighbours(emb, 2).tolist()[:5] == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]]


def test_drop_self_removes_own_id_else_the_last():
    ids = np.array([[3, 0, 5], [0, 2, 4], [1, 2, 7]])
    assert drop_self(ids, np.array([0, 4, 9])).tolist() == [[3, 5], [0, 2], [1, 2]]


def test_query_beyond_k_plus_one_duplicates_drops_the_last():
    # query 4 has four exact duplicates with lower ids: its own id is not among its 2 nearest,
    # so DiVA's "drop position 0" would drop a duplicate; the rule drops the last instead
    emb = np.tile(np.array([[0.6, 0.8]], np.float32), (5, 1))
    assert nearest_neighbours(emb, 1).tolist() == [[1], [0], [0], [0], [0]]
    assert ref.neighbours(emb, 1) == [[1], [0], [0], [0], [0]]


def test_k_larger_than_gallery_is_clamped():
    emb = np.eye(4, dtype=np.float32)
    assert nearest_neighbours(emb, 10).shape == (4, 3)
    assert nearest_neighbours(emb[:2], 10, emb).shape == (2, 4)
    assert nearest_neighbours(emb[:1], 3).shape == (1, 0)
