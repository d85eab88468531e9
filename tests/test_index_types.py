"""Index types on synthetic clustered vectors: every preset against a numpy brute-force search,
add / remove against a rebuild from the same items, search knobs from the manifest, the
memory-mapped read, and indexes written before index types existed."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from diva_tf.serving import index as idx

DIM = 512
K = 10
RERANKED = "IVF4096,PQ128x4fs,RFlat"
# Recall@10 against the exact top 10 that each preset must reach on the clustered test vectors
# with its default knobs (the trained compressed type loses precision by design).
RECALL_FLOOR = {"Flat": 1.0, "HNSW32": 0.95, "IVF1024,Flat": 0.9, "IVF4096,PQ64": 0.5,
                RERANKED: 0.9}
# faiss's product quantizer trains slowly here (~30 s for 5,000 vectors on one busy core)
TYPES = [("Flat", 2000), ("HNSW32", 2000), ("IVF1024,Flat", 5000), (RERANKED, 5000),
         pytest.param("IVF4096,PQ64", 5000, marks=pytest.mark.slow)]
EXACT_SCORES = ("Flat", "HNSW32", "IVF1024,Flat", RERANKED)  # uncompressed or re-ranked
KNOBS_OF = {"Flat": set(), "HNSW32": {"efSearch"}, RERANKED: {"nprobe", "k_factor_rf"}}
TRAIN_SIZE = 4096  # the fewest vectors IVF4096 trains on


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One faiss thread: HNSW insertion is then deterministic (and the CPU is shared)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, seed: int = 0, classes: int = 400, noise: float = 0.8) -> np.ndarray:
    """Unit vectors: a class centre on the sphere + Gaussian noise of norm `noise`."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, classes, n)]
    x += rng.standard_normal(x.shape).astype(np.float32) * np.float32(noise / np.sqrt(DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(gallery: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = K):
    """(scores, ids) of the k highest inner products, in numpy."""
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, axis=1), ids[top]


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1] for f, e in zip(found, exact)]))


TRAINED = {}  # (index_type, training vectors) -> a trained empty index: PQ trains once


def build(index_type: str, vectors: np.ndarray, ids: np.ndarray, train_on=None, **knobs):
    """What build_index does after embedding: new index, train (seeded sample), add, knobs."""
    import faiss

    train_on = vectors if train_on is None else train_on
    key = (index_type, hashlib.sha1(train_on.tobytes()).hexdigest())
    if key not in TRAINED:
        TRAINED[key] = idx.new_index(index_type, DIM)
        idx.train(TRAINED[key], train_on, index_type, TRAIN_SIZE, 0)
    index = faiss.clone_index(TRAINED[key])
    params = idx.search_params(index, index_type, **knobs)
    index = idx.add_vectors(index, vectors, ids)
    idx.apply_search_params(index, params)
    return index, params


@pytest.fixture(scope="module")
def data():
    return clustered(5200, seed=1)


@pytest.mark.parametrize("index_type,n", TYPES)
def test_preset_recall_against_brute_force(index_type, n, data):
    gallery, queries = data[:n], data[5000:5200]
    ids = np.arange(n, dtype=np.int64)
    index, params = build(index_type, gallery, ids)
    scores, found = index.search(queries, K)
    exact_scores, exact = brute_force(gallery, ids, queries)
    assert recall_at(found, exact) >= RECALL_FLOOR[index_type]
    assert set(params) == KNOBS_OF.get(index_type, {"nprobe"})
    if index_type in EXACT_SCORES:
        np.testing.assert_allclose(scores, np.sum(gallery[found] * queries[:, None], -1),
                                   atol=1e-5)
    if index_type == "Flat":
        np.testing.assert_array_equal(found, exact)
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


@pytest.mark.parametrize("index_type,n", TYPES)
def test_add_and_remove_equal_a_rebuild(index_type, n, data):
    gallery, queries = data[:n], data[5000:5200]
    ids = np.arange(100, 100 + n, dtype=np.int64)  # ids need not be positions
    first, later = n * 3 // 4, n // 4
    gone = ids[np.random.default_rng(2).choice(n, n // 10, replace=False)]
    keep = ~np.isin(ids, gone)

    grown, _ = build(index_type, gallery[:first], ids[:first], train_on=gallery)
    grown = idx.add_vectors(grown, gallery[first:], ids[first:])
    whole, _ = build(index_type, gallery, ids, train_on=gallery)
    if index_type == "Flat":  # HNSW adds into the graph it has: same recall, not the same graph
        np.testing.assert_array_equal(grown.search(queries, K)[1], whole.search(queries, K)[1])
    assert recall_at(grown.search(queries, K)[1], brute_force(gallery, ids, queries)[1]) >= \
        RECALL_FLOOR[index_type]
    shrunk = idx.remove_vectors(grown, gone)
    assert shrunk.ntotal == keep.sum()
    rebuilt, _ = build(index_type, gallery[keep], ids[keep], train_on=gallery)

    got, want = shrunk.search(queries, K), rebuilt.search(queries, K)
    if index_type in ("Flat", "HNSW32"):
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    exact = brute_force(gallery[keep], ids[keep], queries)[1]
    assert not np.isin(got[1], gone).any()
    assert recall_at(got[1], exact) >= RECALL_FLOOR[index_type]


def fake_manifest(index_type: str, params: dict) -> dict:
    manifest = {"model": {"fingerprint": "f", "model_version": 1, "embedding_dim": DIM},
                "count": 0, "index_type": index_type}
    if params:
        manifest["search"] = params
    return manifest


def write(out: str, index, ids, index_type: str = "Flat", params: dict | None = None) -> str:
    items = [{"id": int(i), "path": f"/img/{i}.jpg", "label": None} for i in ids]
    idx.write_index(out, index, items, dict(fake_manifest(index_type, params or {}),
                                            count=len(items)))
    return out


@pytest.mark.parametrize("index_type,n", TYPES[:4])  # the PQ preset: in the benchmark
def test_read_is_memory_mapped_and_searches_as_built(index_type, n, data, tmp_path):
    gallery, queries = data[:n], data[5000:5100]
    ids = np.arange(n, dtype=np.int64)
    index, params = build(index_type, gallery, ids)
    out = write(str(tmp_path / "ix"), index, ids, index_type, params)
    loaded = idx.RetrievalIndex.read(out)
    hits = loaded.search(queries, K)
    scores, found = index.search(queries, K)
    assert [[h.id for h in row] for row in hits] == found.tolist()
    np.testing.assert_allclose([[h.score for h in row] for row in hits], scores, atol=1e-6)
    assert hits[0][0].path == f"/img/{found[0, 0]}.jpg"


def test_knobs_come_from_the_manifest_unless_given(data, tmp_path):
    import faiss

    gallery = data[:5000]
    ids = np.arange(5000, dtype=np.int64)
    index, params = build("IVF1024,Flat", gallery, ids, nprobe=7)
    assert params == {"nprobe": 7}
    out = write(str(tmp_path / "ivf"), index, ids, "IVF1024,Flat", params)
    assert faiss.extract_index_ivf(idx.RetrievalIndex.read(out).index).nprobe == 7
    assert faiss.extract_index_ivf(idx.RetrievalIndex.read(out, nprobe=3).index).nprobe == 3
    hnsw, params = build("HNSW32", gallery[:500], ids[:500])
    assert params == {"efSearch": idx.KNOBS["efSearch"][0]}
    out = write(str(tmp_path / "hnsw"), hnsw, ids[:500], "HNSW32", params)
    read = idx.RetrievalIndex.read(out, ef_search=99).index
    assert faiss.downcast_index(read.index).hnsw.efSearch == 99
    reranked, params = build(RERANKED, gallery, ids, nprobe=64, k_factor=8)
    assert params == {"nprobe": 64, "k_factor_rf": 8}
    out = write(str(tmp_path / "rflat"), reranked, ids, RERANKED, params)
    for given, want in (({}, 8), ({"k_factor": 3}, 3)):
        read = idx.RetrievalIndex.read(out, **given).index
        assert faiss.downcast_index(read.index).k_factor == want
        assert faiss.extract_index_ivf(read).nprobe == 64


@pytest.mark.parametrize("index_type,knobs,message", [
    ("HNSW3x", {}, r"^--index_type 'HNSW3x': not a faiss index_factory string for 512-d vectors "
                   r"\(could not parse index string HNSW3x\); presets: Flat, HNSW32"),
    ("IVF16,PQ7", {}, r"^--index_type 'IVF16,PQ7': .*multiple of the number of subquantizers"),
    ("HNSW32", {"nprobe": 4}, r"^--nprobe applies to IVF indexes only, not --index_type HNSW32$"),
    ("Flat", {"ef_search": 4}, r"^--ef_search applies to HNSW indexes only, not --index_type Flat$"),
    ("IVF16,Flat", {"nprobe": 17}, r"^--nprobe=17: the index has only 16 inverted lists$"),
    ("IVF16,Flat", {"nprobe": 0}, r"^--nprobe=0: must be an integer >= 1$"),
    ("IVF16,Flat", {"k_factor": 4}, r"^--k_factor applies to RFlat indexes only, not "
                                    r"--index_type IVF16,Flat$"),
    ("IVF16,PQ64x4fs,RFlat", {"k_factor": 0}, r"^--k_factor=0: must be an integer >= 1$"),
])
def test_bad_settings_are_one_line(index_type, knobs, message):
    with pytest.raises(idx.IndexDataError, match=message) as error:
        idx.search_params(idx.new_index(index_type, DIM), index_type, **knobs)
    assert "\n" not in str(error.value)


def test_training_needs_enough_vectors(data):
    with pytest.raises(idx.IndexDataError, match=r"^--index_type IVF1024,Flat: cannot train on 500 "
                       r"vectors \(Number of training points \(500\) should be at least as large "
                       r"as number of clusters \(1024\)\)"):
        idx.train(idx.new_index("IVF1024,Flat", DIM), data[:500], "IVF1024,Flat", 100_000, 0)


def test_training_sample_is_seeded_and_sized(data):
    import faiss

    def centroids(seed, size):
        index = idx.new_index("IVF16,Flat", DIM)
        assert idx.train(index, data[:2000], "IVF16,Flat", size, seed) == {"size": min(size, 2000),
                                                                            "seed": seed}
        return faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 16)

    np.testing.assert_array_equal(centroids(3, 800), centroids(3, 800))
    assert not np.array_equal(centroids(3, 800), centroids(4, 800))
    np.testing.assert_array_equal(centroids(3, 5000), centroids(9, 5000))  # whole gallery


def test_an_index_written_before_index_types_still_opens(data, tmp_path):
    """Flat indexes are the plain IndexFlatIP of old, and an old manifest (no index_type, no
    search knobs) reads as Flat."""
    import faiss

    gallery = data[:300]
    old = faiss.IndexFlatIP(DIM)
    old.add(gallery)
    out = str(tmp_path / "old")
    write(out, old, range(300))
    with open(os.path.join(out, idx.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    del manifest["index_type"]
    with open(os.path.join(out, idx.MANIFEST_FILE), "w") as f:
        json.dump(manifest, f)
    new, params = build("Flat", gallery, np.arange(300, dtype=np.int64))
    assert params == {} and type(new) is faiss.IndexFlatIP
    assert faiss.serialize_index(new).tobytes() == open(os.path.join(out, idx.INDEX_FILE),
                                                        "rb").read()
    hits = idx.RetrievalIndex.read(out).search(data[5000:5003], 3)
    np.testing.assert_array_equal([[h.id for h in row] for row in hits],
                                  brute_force(gallery, np.arange(300), data[5000:5003], 3)[1])
