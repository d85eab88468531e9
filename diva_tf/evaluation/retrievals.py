"""A PNG of example retrievals: one row per random query, the query then its k nearest
neighbours, each neighbour framed green if it has the query's class and red if not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from diva_tf.evaluation.knn import ExactIndex, drop_self

QUERY_FRAME = (128, 128, 128)
CORRECT_FRAME = (0, 170, 0)
WRONG_FRAME = (220, 0, 0)
BACKGROUND = (255, 255, 255)


def pick_queries(n_items: int, n: int, seed: int = 0) -> np.ndarray:
    """min(n, n_items) distinct item ids, the same for the same seed."""
    return np.random.default_rng(seed).choice(n_items, size=min(n, n_items), replace=False)


def load_tile(item, size: int) -> Image.Image:
    """An image file path, encoded bytes or an [h, w, 3] array -> RGB centre-cropped square."""
    if isinstance(item, (str, bytes)):
        image = Image.open(item if isinstance(item, str) else io.BytesIO(item))
    else:
        image = Image.fromarray(np.clip(np.asarray(item), 0, 255).astype(np.uint8))
    return ImageOps.fit(image.convert("RGB"), (size, size))


def retrieval_grid(rows: list, correct: np.ndarray, tile: int = 96, border: int = 4) -> Image.Image:
    """rows[i] = [query tile, neighbour tiles...] (PIL, tile x tile); correct [n, k] bool.

    Every cell is tile + 2 * border pixels wide, its frame the border; a gap of one border
    separates the query column from the neighbours.
    """
    cell = tile + 2 * border
    n_cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (n_cols * cell + border, len(rows) * cell), BACKGROUND)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            frame = QUERY_FRAME if j == 0 else CORRECT_FRAME if correct[i][j - 1] else WRONG_FRAME
            x, y = j * cell + (border if j else 0), i * cell
            grid.paste(Image.new("RGB", (cell, cell), frame), (x, y))
            grid.paste(image, (x + border, y + border))
    return grid


def save_retrievals(path: str, emb, labels, images, n_queries: int, k: int = 4, seed: int = 0,
                    tile: int = 96) -> np.ndarray:
    """Write the grid of `n_queries` random queries (self match dropped) to `path` (PNG);
    `images[i]` is item i as `load_tile` accepts. Returns the query ids."""
    labels = np.asarray(labels).reshape(-1)
    queries = pick_queries(len(labels), n_queries, seed)
    _, ids = ExactIndex(emb).search(np.asarray(emb)[queries], k + 1)
    ids = drop_self(ids, queries)
    rows = [[load_tile(images[q], tile), *(load_tile(images[j], tile) for j in ids[i])]
            for i, q in enumerate(queries)]
    retrieval_grid(rows, labels[ids] == labels[queries, None], tile).save(path, format="PNG")
    return queries
