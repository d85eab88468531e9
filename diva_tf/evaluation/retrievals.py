"""A PNG of example retrievals: one row per random query, the query then its k nearest
neighbours, each neighbour framed green if it has the query's class and red if not. With class
names, every tile is captioned: the query with its class, a neighbour with its class and its cosine
similarity to the query."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from diva_tf.evaluation.knn import ExactIndex, drop_self

QUERY_FRAME = (128, 128, 128)
CORRECT_FRAME = (0, 170, 0)
WRONG_FRAME = (220, 0, 0)
BACKGROUND = (255, 255, 255)
CAPTION_COLOR = (0, 0, 0)
CAPTION_LINE = 14  # pixels per caption line of PIL's default font, descenders included


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


def retrieval_grid(rows: list, correct: np.ndarray, tile: int = 96, border: int = 4,
                   captions: list | None = None) -> Image.Image:
    """rows[i] = [query tile, neighbour tiles...] (PIL, tile x tile); correct [n, k] bool;
    captions[i][j] = text lines under tile j of row i (optional).

    Every cell is tile + 2 * border pixels wide, its frame the border; a gap of one border
    separates the query column from the neighbours. Captions add a band of CAPTION_LINE pixels per
    line below each row.
    """
    cell = tile + 2 * border
    lines = max((len(c) for row in captions or [] for c in row), default=0)
    row_height = cell + lines * CAPTION_LINE
    n_cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (n_cols * cell + border, len(rows) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            frame = QUERY_FRAME if j == 0 else CORRECT_FRAME if correct[i][j - 1] else WRONG_FRAME
            x, y = j * cell + (border if j else 0), i * row_height
            grid.paste(Image.new("RGB", (cell, cell), frame), (x, y))
            grid.paste(image, (x + border, y + border))
            for n, text in enumerate(captions[i][j] if captions else []):
                draw.text((x + 1, y + cell + n * CAPTION_LINE), _fit(draw, text, cell - 2),
                          fill=CAPTION_COLOR)
    return grid


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """`text`, shortened with '~' until it is at most `width` pixels wide."""
    while len(text) > 1 and draw.textlength(text) > width:
        text = text[:-2] + "~"
    return text


def save_retrievals(path: str, emb, labels, images, n_queries: int, k: int = 4, seed: int = 0,
                    tile: int = 96, class_names: list | None = None) -> dict:
    """Write the grid of `n_queries` random queries (self match dropped) to `path` (PNG);
    `images[i]` is item i as `load_tile` accepts, `class_names[label]` its class (captions when
    given). Returns {"queries": ids [q], "neighbours": ids [q, k], "scores": cosine [q, k]}."""
    labels = np.asarray(labels).reshape(-1)
    emb = np.asarray(emb, np.float32)
    queries = pick_queries(len(labels), n_queries, seed)
    _, ids = ExactIndex(emb).search(emb[queries], k + 1)
    ids = drop_self(ids, queries)
    scores = np.einsum("qd,qkd->qk", emb[queries], emb[ids])
    rows = [[load_tile(images[q], tile), *(load_tile(images[j], tile) for j in ids[i])]
            for i, q in enumerate(queries)]
    captions = None
    if class_names is not None:
        captions = [[[str(class_names[labels[q]]), "query"],
                     *([str(class_names[labels[j]]), f"{s:.3f}"] for j, s in zip(ids[i], scores[i]))]
                    for i, q in enumerate(queries)]
    grid = retrieval_grid(rows, labels[ids] == labels[queries, None], tile, captions=captions)
    grid.save(path, format="PNG")
    return {"queries": queries, "neighbours": ids, "scores": scores}
