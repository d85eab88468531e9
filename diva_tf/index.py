"""Image retrieval over a diva_tf export: a faiss inner-product index of its unit-norm embeddings.

`python -m diva_tf.index build --saved_model export/models/diva[/N] --images DIR
[--labels_from_folders] --out INDEX_DIR`
`python -m diva_tf.index search --index INDEX_DIR --saved_model export/models/diva[/N] [--k 5]
IMAGE...`

Embeddings come from the SavedModel's `serving_default` (encoded bytes in, so the index sees the
exact preprocessing a served model applies). Embeddings are unit-norm, so inner product = cosine
similarity and ranks like the Euclidean distance DiVA evaluates with. An index remembers which
SavedModel built it (path, version, fingerprint) and refuses to be queried with another one:
embeddings of two different models are not comparable.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import numpy as np

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
MANIFEST_FILE = "manifest.json"


class IndexMismatchError(RuntimeError):
    """The index was built by another SavedModel than the one it is queried with."""


@dataclasses.dataclass(frozen=True)
class Hit:
    id: int
    path: str
    label: str | None
    score: float


# ---- inputs ---------------------------------------------------------------------------------
def find_images(root: str) -> list[str]:
    """Image files under root, as the dataset loaders list them (sorted, hidden files skipped)."""
    from diva_tf.data.imagefiles import list_images

    if not os.path.isdir(root):
        raise FileNotFoundError(f"--images {root}: no such folder")
    return list_images(root)


def folder_label(root: str, path: str) -> str | None:
    """Class-per-folder label: the first folder below root (None for files directly in root)."""
    parts = os.path.relpath(path, root).split(os.sep)
    return parts[0] if len(parts) > 1 else None


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def embed_files(export, paths: list[str], batch_size: int = 64) -> tuple[np.ndarray, list[int]]:
    """(embeddings [m, d], indices into `paths` that were embedded). A batch holding an
    undecodable file is retried image by image, and such files are left out."""
    import tensorflow as tf

    kept, chunks = [], []
    for start in range(0, len(paths), batch_size):
        batch = list(range(start, min(start + batch_size, len(paths))))
        try:
            chunks.append(export.embed_bytes([read_bytes(paths[i]) for i in batch]))
            kept += batch
        except tf.errors.InvalidArgumentError:
            for i in batch:
                try:
                    chunks.append(export.embed_bytes([read_bytes(paths[i])]))
                    kept.append(i)
                except tf.errors.InvalidArgumentError:
                    pass
    dim = export.manifest["embedding_dim"]
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(embeddings, dtype=np.float32), kept


# ---- identity of the embedding model --------------------------------------------------------
def model_identity(export) -> dict:
    """What an index must match: the exact SavedModel and the embedding it produces."""
    from diva_tf.export import fingerprint

    m = export.manifest
    return {"saved_model": os.path.abspath(export.version_dir), "model_version": m["model_version"],
            "fingerprint": fingerprint(export.version_dir), "embedding_dim": m["embedding_dim"],
            "heads": m["heads"], "head_weights": m["head_weights"], "metrics": m.get("metrics")}


def check_identity(built: dict, given: dict, index_dir: str) -> None:
    """Raise IndexMismatchError unless `given` is the SavedModel the index was built with."""
    if built["fingerprint"] == given["fingerprint"]:
        return
    diffs = [f"{k}: index {built.get(k)!r} vs given {given.get(k)!r}"
             for k in ("saved_model", "model_version", "embedding_dim", "head_weights",
                       "fingerprint")
             if built.get(k) != given.get(k)]
    raise IndexMismatchError(
        f"index {index_dir} was built with another SavedModel ({'; '.join(diffs)}); its embeddings "
        f"are not comparable. Query it with {built['saved_model']} or rebuild it with "
        f"`python -m diva_tf.index build --saved_model {given['saved_model']} ...`")


def check_served(built: dict, model_version, embedding_dim: int, index_dir: str) -> None:
    """Weaker check for embeddings from a REST server (no files to fingerprint): version and dim."""
    if str(built["model_version"]) != str(model_version) or built["embedding_dim"] != embedding_dim:
        raise IndexMismatchError(
            f"index {index_dir} was built with model version {built['model_version']} "
            f"(embedding dim {built['embedding_dim']}) but the server answered with version "
            f"{model_version} (embedding dim {embedding_dim}); rebuild the index")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---- the index ------------------------------------------------------------------------------
@dataclasses.dataclass
class RetrievalIndex:
    index: object  # faiss.IndexFlatIP
    items: list[dict]  # id -> {"id", "path", "label"}
    manifest: dict
    index_dir: str = ""

    @classmethod
    def read(cls, index_dir: str) -> "RetrievalIndex":
        """Load without checking the model (see `open_index`)."""
        import faiss

        with open(os.path.join(index_dir, MANIFEST_FILE)) as f:
            manifest = json.load(f)
        with open(os.path.join(index_dir, ITEMS_FILE)) as f:
            items = json.load(f)
        index = faiss.read_index(os.path.join(index_dir, INDEX_FILE))
        return cls(index, items, manifest, index_dir)

    def search(self, embeddings: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-k hits (highest cosine similarity first) for each row of `embeddings`."""
        queries = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if queries.shape[1] != self.index.d:
            raise IndexMismatchError(f"query dim {queries.shape[1]} != index dim {self.index.d}")
        scores, ids = self.index.search(queries, min(k, self.index.ntotal))
        return [[Hit(int(i), self.items[i]["path"], self.items[i]["label"], float(s))
                 for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]


def open_index(index_dir: str, export) -> RetrievalIndex:
    """Load an index and make sure `export` (a diva_tf.export.LoadedExport) built it."""
    index = RetrievalIndex.read(index_dir)
    check_identity(index.manifest["model"], model_identity(export), index_dir)
    return index


def build_index(saved_model: str, images_dir: str, out_dir: str, labels_from_folders: bool = False,
                batch_size: int = 64) -> RetrievalIndex:
    """Embed every image under images_dir and write index.faiss, items.json and manifest.json."""
    import faiss
    from absl import logging

    from diva_tf.export import load_export

    export = load_export(saved_model)
    paths = find_images(images_dir)
    if not paths:
        raise FileNotFoundError(f"no image files under {images_dir}")
    embeddings, kept = embed_files(export, paths, batch_size)
    skipped = len(paths) - len(kept)
    if skipped:
        bad = sorted(set(range(len(paths))) - set(kept))
        logging.warning("skipped %d of %d image(s) that could not be decoded, e.g. %s", skipped,
                        len(paths), [paths[i] for i in bad[:3]])
    root = os.path.abspath(images_dir)
    kept_paths = [os.path.abspath(paths[i]) for i in kept]
    items = [{"id": n, "path": p, "label": folder_label(root, p) if labels_from_folders else None}
             for n, p in enumerate(kept_paths)]
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    manifest = {"model": model_identity(export), "images": root, "count": len(items),
                "skipped": skipped, "labels_from_folders": labels_from_folders,
                "metric": "inner_product (cosine on unit-norm embeddings)",
                "built_at": _now()}
    os.makedirs(out_dir, exist_ok=True)
    faiss.write_index(index, os.path.join(out_dir, INDEX_FILE))
    for name, obj in ((ITEMS_FILE, items), (MANIFEST_FILE, manifest)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(obj, f, indent=1)
    logging.info("indexed %d image(s) from %s into %s (dim %d, model version %s)", len(items),
                 images_dir, out_dir, embeddings.shape[1], manifest["model"]["model_version"])
    return RetrievalIndex(index, items, manifest, out_dir)


def search_images(index_dir: str, saved_model: str, images: list[str],
                  k: int = 5) -> list[list[Hit]]:
    """Embed query image files with the SavedModel the index was built with, and search."""
    from diva_tf.export import load_export

    export = load_export(saved_model)
    index = open_index(index_dir, export)
    return index.search(export.embed_bytes([read_bytes(p) for p in images]), k)


def format_hits(query: str, hits: list[Hit]) -> str:
    lines = [query]
    lines += [f"  {rank}. {h.score:.4f}  {h.label if h.label is not None else '-'}  {h.path}"
              for rank, h in enumerate(hits, 1)]
    return "\n".join(lines)


# ---- CLI ------------------------------------------------------------------------------------
def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("saved_model", "export/models/diva",
                        "Export version folder, or its base path (-> highest version).")
    flags.DEFINE_string("images", None, "build: folder of images to index (searched recursively).")
    flags.DEFINE_bool("labels_from_folders", False,
                      "build: label = first sub-folder below --images.")
    flags.DEFINE_string("out", None, "build: output index folder.")
    flags.DEFINE_integer("batch_size", 64, "build: images per SavedModel call.")
    flags.DEFINE_string("index", None, "search: index folder.")
    flags.DEFINE_integer("k", 5, "search: neighbours per query.")


def main(argv) -> int:
    import tensorflow as tf
    from absl import app, flags, logging

    from diva_tf.export import ExportError

    f = flags.FLAGS
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    try:
        if command == "build":
            if args or not f.images or not f.out:
                raise app.UsageError("build needs --images and --out, and no positional arguments")
            build_index(f.saved_model, f.images, f.out, f.labels_from_folders, f.batch_size)
        elif command == "search":
            if not args or not f.index:
                raise app.UsageError("search needs --index and at least one IMAGE")
            for query, hits in zip(args, search_images(f.index, f.saved_model, args, f.k)):
                print(format_hits(query, hits))
        else:
            raise app.UsageError("usage: python -m diva_tf.index build|search [flags] [IMAGE...]")
    except (IndexMismatchError, ExportError, FileNotFoundError) as e:
        logging.error("%s", e)
        return 2
    except tf.errors.InvalidArgumentError as e:
        logging.error("could not embed a query image: %s", e.message)
        return 2
    return 0


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
