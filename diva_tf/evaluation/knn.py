"""Exact k-nearest-neighbour retrieval on unit-norm embeddings (faiss inner product).

Inner product ranks unit vectors like the squared Euclidean distance DiVA uses (algorithm.md 7.1). Queries
are searched in chunks, so memory is O(chunk x k), never O(N x N).

Ties are broken deterministically: among equally similar items the lower gallery index ranks
first, including at the k-th position. Rows whose k-th and (k+1)-th similarities are equal are
re-ranked exactly in numpy (faiss's heap would pick an arbitrary subset of the tied items).
Every row's similarities come from one computation, so each ranking is self-consistent.

Self-retrieval (query set = gallery): DiVA searches k+1 neighbours and drops position 0, assuming
it is the query. With duplicates that is not always true, so here the query's own index is dropped
when it is among the k+1, and otherwise (at least k+1 other items are exactly as similar as the
query to itself) the last of the k+1 is dropped.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

GPU_MAX_K = 2048  # faiss GPU top-k limit
CHUNK_ENTRIES = 1 << 22  # query rows x k per search call
MAX_CHUNK = 8192
_BRUTE_FORCE_ENTRIES = 1 << 24  # rows x gallery similarities per numpy re-rank


def as_float32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def default_chunk_size(k: int) -> int:
    return int(np.clip(CHUNK_ENTRIES // (k + 2), 1, MAX_CHUNK))


class ExactIndex:
    """Exact inner-product top-k over a fixed gallery; faiss GPU when available, else CPU."""

    def __init__(self, gallery, gpu: bool | None = None):
        import faiss

        self.gallery = as_float32(gallery)
        if self.gallery.ndim != 2:
            raise ValueError(f"gallery must be [n, d], got shape {self.gallery.shape}")
        self._cpu = faiss.IndexFlatIP(self.gallery.shape[1])
        self._cpu.add(self.gallery)
        if gpu is None:
            gpu = faiss.get_num_gpus() > 0
        self._gpu = None
        if gpu:
            self._gpu_resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._cpu)

    def __len__(self) -> int:
        return self.gallery.shape[0]

    def _faiss_search(self, queries: np.ndarray, k: int):
        index = self._gpu if self._gpu is not None and k <= GPU_MAX_K else self._cpu
        return index.search(queries, k)

    def _brute_force(self, queries: np.ndarray, k: int):
        """Canonical top-k from all similarities, O(rows x N) (no full sort, so even fully
        collapsed embeddings, where every row is tied, stay fast)."""
        rows = max(1, _BRUTE_FORCE_ENTRIES // len(self))
        sims, ids = [], []
        for start in range(0, len(queries), rows):
            s = queries[start:start + rows] @ self.gallery.T
            kth = -np.partition(-s, k - 1, axis=1)[:, k - 1:k]
            above = s > kth
            room = k - above.sum(axis=1, keepdims=True)
            tied = s == kth
            take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
            top = np.nonzero(take)[1].reshape(len(s), k)
            top_sims = np.take_along_axis(s, top, axis=1)
            order = np.lexsort((top, -top_sims), axis=1)
            sims.append(np.take_along_axis(top_sims, order, axis=1))
            ids.append(np.take_along_axis(top, order, axis=1))
        return np.concatenate(sims), np.concatenate(ids).astype(np.int64)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 [n, k'], gallery ids int64 [n, k']), k' = min(k, len(gallery)),
        by decreasing similarity, ties by increasing id."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        queries = as_float32(queries)
        k = min(int(k), len(self))
        probe = min(k + 1, len(self))
        sims, ids = self._faiss_search(queries, probe)
        order = np.lexsort((ids, -sims), axis=1)
        sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        if probe > k:
            tied = np.flatnonzero(sims[:, k - 1] == sims[:, k])
            if tied.size:
                sims[tied], ids[tied] = self._brute_force(queries[tied], probe)
        return sims[:, :k], ids[:, :k]


def drop_self(ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Remove each row's own id, or its last column when the own id is absent: [n, k+1] -> [n, k]."""
    drop = ids == np.asarray(query_ids)[:, None]
    drop[~drop.any(axis=1), -1] = True
    return ids[~drop].reshape(ids.shape[0], ids.shape[1] - 1)


def iter_neighbours(query, k: int, gallery=None, chunk_size: int | None = None,
                    gpu: bool | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first query row, gallery ids [c, k']) chunk by chunk.

    Without `gallery` the queries are their own gallery and the self match is dropped
    (k' = min(k, n - 1)); with it, k' = min(k, len(gallery)) and nothing is dropped.
    """
    query = as_float32(query)
    self_search = gallery is None
    index = ExactIndex(query if self_search else gallery, gpu=gpu)
    probe = k + 1 if self_search else k
    chunk = chunk_size or default_chunk_size(probe)
    for start in range(0, len(query), chunk):
        _, ids = index.search(query[start:start + chunk], probe)
        if self_search:
            ids = drop_self(ids, np.arange(start, start + len(ids)))
        yield start, ids


def nearest_neighbours(query, k: int, gallery=None, chunk_size: int | None = None,
                       gpu: bool | None = None) -> np.ndarray:
    """All rows of `iter_neighbours` at once: int64 [n, k']."""
    parts = [ids for _, ids in iter_neighbours(query, k, gallery, chunk_size, gpu)]
    width = parts[0].shape[1] if parts else 0
    return np.concatenate(parts) if parts else np.zeros((0, width), np.int64)
