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

Over REST (export/client.py --index) there are no files to fingerprint, and TF Serving's
/metadata shows only signature defs, so the manifest also keeps a *probe*: a fixed 32x32 PNG and
its embedding by the building SavedModel. The client sends the probe through the URL and version
it queries and refuses a server whose embedding of it differs by more than float noise
(`PROBE_ATOL`): that catches another model behind the same version number and dimension, other
head weights and other preprocessing, with TF Serving or the stand-in alike.

`build --out DIR` writes the new index into a hidden folder beside DIR and swaps it in at the end
(`diva_tf.serving.export.swap_in`): a killed build leaves the previous index readable, and the next build
removes a dead build's leftovers. DIR must be an index folder or empty (nothing else is replaced).

Query files that cannot be read or decoded are reported one line each (`FILE: why`); the other
queries are still answered, and the command then exits 2.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
import re
import shutil

import numpy as np

from diva_tf.core.errors import DivaError

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.json"
MANIFEST_FILE = "manifest.json"
INDEX_FILES = (INDEX_FILE, ITEMS_FILE, MANIFEST_FILE)
PROBE_SIZE = 32
# Max abs difference of a served probe embedding (unit norm) from the stored one. The same
# SavedModel on other hardware (GPU, TF32) stays well below; other weights move it by ~1e-1.
PROBE_ATOL = 1e-3


class IndexMismatchError(DivaError, RuntimeError):
    """The index was built by another SavedModel than the one it is queried with."""


class IndexDataError(DivaError, RuntimeError):
    """An index folder that cannot be read, or --out that must not be replaced."""


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


def tf_reason(message: str) -> str:
    """The one line of a TensorFlow error message that says what went wrong (the line before
    TF's `[[{{node ...}}]]` trailer, without its `{{function_node ...}}` prefix)."""
    text = message.split("[[", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[-1] if lines else message)


def embed_files(export, paths: list[str],
                batch_size: int = 64) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """(embeddings [m, d], indices into `paths` that were embedded, {index: why not} for files
    that could not be read or decoded). A batch holding an undecodable file is retried image by
    image, so one bad file costs only itself."""
    import tensorflow as tf

    failed, kept, chunks = {}, [], []

    def embed(batch: list) -> None:  # [(index, bytes)]
        try:
            chunks.append(export.embed_bytes([data for _, data in batch]))
            kept.extend(i for i, _ in batch)
        except tf.errors.InvalidArgumentError:
            for i, data in batch:
                try:
                    chunks.append(export.embed_bytes([data]))
                    kept.append(i)
                except tf.errors.InvalidArgumentError as e:
                    failed[i] = f"not a decodable image ({tf_reason(e.message)})"

    batch = []  # files are read batch by batch: memory holds one batch of encoded images
    for i, path in enumerate(paths):
        try:
            batch.append((i, read_bytes(path)))
        except OSError as e:
            failed[i] = e.strerror or str(e)
        if len(batch) == batch_size:
            embed(batch)
            batch = []
    if batch:
        embed(batch)
    dim = export.manifest["embedding_dim"]
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(embeddings, dtype=np.float32), kept, failed


# ---- the probe: a fixed image whose embedding identifies the model over REST ------------------
def probe_image() -> bytes:
    """A fixed 32x32 RGB noise PNG (its bytes are stored in the manifest, so the generator
    never has to reproduce them)."""
    import tensorflow as tf

    pixels = np.random.RandomState(0).randint(0, 256, (PROBE_SIZE, PROBE_SIZE, 3)).astype(np.uint8)
    return tf.io.encode_png(pixels).numpy()


def make_probe(export) -> dict:
    """The manifest's probe: the PNG (base64) and its embedding by `export`."""
    png = probe_image()
    return {"png_b64": base64.b64encode(png).decode("ascii"),
            "embedding": export.embed_bytes([png])[0].tolist()}


def probe_bytes(manifest: dict, index_dir: str) -> bytes:
    """The probe PNG of an index, for a client to send through the server it queries."""
    if "probe" not in manifest:
        raise IndexMismatchError(
            f"index {index_dir} has no probe embedding (built by an older diva_tf), so a served "
            "model cannot be checked against it; rebuild it with `python -m diva_tf.index build`")
    return base64.b64decode(manifest["probe"]["png_b64"])


# ---- identity of the embedding model --------------------------------------------------------
def model_identity(export) -> dict:
    """What an index must match: the exact SavedModel and the embedding it produces."""
    from diva_tf.serving.export import fingerprint

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


def check_served(manifest: dict, model_version, probe_embedding, index_dir: str,
                  atol: float = PROBE_ATOL) -> None:
    """Check a REST server against the index: the version and dimension it answered with, and
    its embedding of the probe image (`probe_bytes`) against the one stored at build time."""
    built = manifest["model"]
    dim = len(probe_embedding)
    if str(built["model_version"]) != str(model_version) or built["embedding_dim"] != dim:
        raise IndexMismatchError(
            f"index {index_dir} was built with model version {built['model_version']} "
            f"(embedding dim {built['embedding_dim']}) but the server answered with version "
            f"{model_version} (embedding dim {dim}); rebuild the index")
    stored = np.asarray(manifest["probe"]["embedding"], np.float64)
    diff = float(np.max(np.abs(np.asarray(probe_embedding, np.float64) - stored)))
    if not diff <= atol:  # also refuses NaN
        raise IndexMismatchError(
            f"index {index_dir} was built with another model than the one served as version "
            f"{model_version}: its probe image embeds {diff:.3g} away (max abs difference, "
            f"tolerance {atol:g}); serve {built['saved_model']} or rebuild the index from the "
            "served SavedModel")


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
        """Load without checking the model (see `open_index`); IndexDataError if the folder is
        not a complete index."""
        import faiss

        if not os.path.isdir(index_dir):
            from diva_tf.serving.export import clean_stale  # imports TensorFlow: only when needed

            parent, name = os.path.split(os.path.abspath(index_dir))
            try:
                clean_stale(parent, name)  # puts back an index whose rebuild died mid-swap
            except OSError:
                pass
            if not os.path.isdir(index_dir):
                raise IndexDataError(f"--index {index_dir}: no such index folder")
        manifest = _read_json(index_dir, MANIFEST_FILE, dict)
        items = _read_json(index_dir, ITEMS_FILE, list)
        try:
            index = faiss.read_index(os.path.join(index_dir, INDEX_FILE))
        except RuntimeError as e:
            raise IndexDataError(f"index {index_dir}: cannot read {INDEX_FILE} "
                                 f"({str(e).strip().splitlines()[-1]}); rebuild the index") from None
        if "model" not in manifest or len(items) != index.ntotal:
            raise IndexDataError(f"index {index_dir}: {ITEMS_FILE} lists {len(items)} images, "
                                 f"{INDEX_FILE} holds {index.ntotal} vectors, {MANIFEST_FILE} "
                                 f"names {'a' if 'model' in manifest else 'no'} model: the "
                                 "files do not belong together; rebuild the index")
        return cls(index, items, manifest, index_dir)

    def search(self, embeddings: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-k hits (highest cosine similarity first) for each row of `embeddings`."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if queries.shape[1] != self.index.d:
            raise IndexMismatchError(f"query dim {queries.shape[1]} != index dim {self.index.d}")
        scores, ids = self.index.search(queries, min(k, self.index.ntotal))
        return [[Hit(int(i), self.items[i]["path"], self.items[i]["label"], float(s))
                 for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]


def _read_json(index_dir: str, name: str, kind: type):
    path = os.path.join(index_dir, name)
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as e:
        raise IndexDataError(f"index {index_dir}: cannot read {name} ({e.strerror}); rebuild "
                             "the index") from None
    except ValueError as e:
        raise IndexDataError(f"index {index_dir}: {name} is not valid JSON ({e}; truncated?); "
                             "rebuild the index") from None
    if not isinstance(value, kind):
        raise IndexDataError(f"index {index_dir}: {name} holds a JSON {type(value).__name__}, "
                             f"not a {kind.__name__}; rebuild the index")
    return value


def open_index(index_dir: str, export) -> RetrievalIndex:
    """Load an index and make sure `export` (a diva_tf.serving.export.LoadedExport) built it."""
    index = RetrievalIndex.read(index_dir)
    check_identity(index.manifest["model"], model_identity(export), index_dir)
    return index


def check_replaceable(out_dir: str) -> None:
    """A build may replace out_dir only if it is missing, empty or an index folder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise IndexDataError(f"--out {out_dir} is a file, not an index folder")
    others = sorted(set(os.listdir(out_dir)) - set(INDEX_FILES)) if os.path.isdir(out_dir) else []
    if others:
        raise IndexDataError(f"--out {out_dir} holds files that are not part of an index "
                             f"({', '.join(others[:3])}); refusing to replace it: choose another "
                             "--out")


def write_index(out_dir: str, index, items: list[dict], manifest: dict) -> None:
    """Write the three files into a hidden folder beside out_dir and swap it in (the previous
    index stays whole until the final renames); leftovers of dead builds are removed first."""
    import faiss

    from diva_tf.serving.export import clean_stale, owned_tempdir, swap_in

    parent, name = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    clean_stale(parent, name)
    tmp = owned_tempdir(parent, "tmp", name)
    try:
        faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
        for file, obj in ((ITEMS_FILE, items), (MANIFEST_FILE, manifest)):
            with open(os.path.join(tmp, file), "w") as f:
                json.dump(obj, f, indent=1)
        swap_in(tmp, os.path.abspath(out_dir), replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_index(saved_model: str, images_dir: str, out_dir: str, labels_from_folders: bool = False,
                batch_size: int = 64) -> RetrievalIndex:
    """Embed every image under images_dir and write index.faiss, items.json and manifest.json."""
    import faiss
    from absl import logging

    from diva_tf.serving.export import load_export

    check_replaceable(out_dir)
    export = load_export(saved_model)
    paths = find_images(images_dir)
    if not paths:
        raise FileNotFoundError(f"no image files under {images_dir}")
    embeddings, kept, failed = embed_files(export, paths, batch_size)
    if failed:
        logging.warning("skipped %d of %d image(s) that could not be read or decoded, e.g. %s",
                        len(failed), len(paths),
                        "; ".join(f"{paths[i]}: {why}" for i, why in sorted(failed.items())[:3]))
    root = os.path.abspath(images_dir)
    kept_paths = [os.path.abspath(paths[i]) for i in kept]
    items = [{"id": n, "path": p, "label": folder_label(root, p) if labels_from_folders else None}
             for n, p in enumerate(kept_paths)]
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    manifest = {"model": model_identity(export), "probe": make_probe(export), "images": root,
                "count": len(items), "skipped": len(failed),
                "labels_from_folders": labels_from_folders,
                "metric": "inner_product (cosine on unit-norm embeddings)",
                "built_at": _now()}
    write_index(out_dir, index, items, manifest)
    logging.info("indexed %d image(s) from %s into %s (dim %d, model version %s)", len(items),
                 images_dir, out_dir, embeddings.shape[1], manifest["model"]["model_version"])
    return RetrievalIndex(index, items, manifest, out_dir)


def search_images(index_dir: str, saved_model: str, images: list[str],
                  k: int = 5) -> list[list[Hit] | str]:
    """Embed query image files with the SavedModel the index was built with, and search. Per
    query, in order: its hits, or why it could not be read or decoded (one line)."""
    from diva_tf.serving.export import load_export

    index = RetrievalIndex.read(index_dir)
    export = load_export(saved_model)
    check_identity(index.manifest["model"], model_identity(export), index_dir)
    embeddings, kept, failed = embed_files(export, images)
    results: list[list[Hit] | str] = [failed.get(i, "") for i in range(len(images))]
    for i, hits in zip(kept, index.search(embeddings, k) if kept else []):
        results[i] = hits
    return results


def format_hits(query: str, hits: list[Hit]) -> str:
    lines = [query]
    lines += [f"  {rank}. {h.score:.4f}  {h.label if h.label is not None else '-'}  {h.path}"
              for rank, h in enumerate(hits, 1)]
    return "\n".join(lines)
